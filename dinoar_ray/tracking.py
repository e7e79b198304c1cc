"""MLflow: tracking store, runs, the pyfunc model, the registry and `models:/` resolution."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import mlflow
import yaml
from mlflow import MlflowClient

from .config import Config
from .package import ModelPackage

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PYFUNC_CODE = os.path.join(os.path.dirname(__file__), "pyfunc_model.py")


def tracking_uri(cfg: Config) -> str:
    return cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def setup(cfg: Config) -> str:
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(cfg.tracking.experiment)
    return uri


def log_params(params: dict) -> None:
    mlflow.log_params({k: (str(v)[:500] if not isinstance(v, (int, float, bool)) else v) for k, v in params.items()})


def log_and_register(package_dir: str, model_name: str, alias: str) -> "ResolvedModel":
    """Log the package as a pyfunc model of the active run, register it, point `alias` at it."""
    import dinoar_ray

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=PYFUNC_CODE,  # models-from-code: nothing pickled
        artifacts={"package": package_dir},
        code_paths=[os.path.dirname(dinoar_ray.__file__)],
        pip_requirements=["torch", "transformers>=4.56", "safetensors", "pillow", "numpy", "pandas"],
    )
    version = mlflow.register_model(info.model_uri, model_name)
    MlflowClient().set_registered_model_alias(model_name, alias, version.version)
    return ResolvedModel(model_name, str(version.version), f"models:/{model_name}/{version.version}", version.run_id)


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str
    uri: str  # models:/<name>/<version>: pinned, unlike an alias
    run_id: str  # the training run


def resolve_model(spec: str, cfg: Config) -> ResolvedModel:
    """'' (the configured alias), 'models:/name@alias', 'models:/name/3', '3', or '@alias' -> a pinned version."""
    client = MlflowClient()
    name, ref = cfg.tracking.model_name, f"@{cfg.tracking.alias}"
    if spec.startswith("models:/"):
        body = spec[len("models:/"):]
        if "@" in body:
            name, ref = body.split("@", 1)[0], "@" + body.split("@", 1)[1]
        elif "/" in body:
            name, ref = body.split("/", 1)
        else:
            raise LookupError(f"--model {spec}: say which version, models:/{body}@<alias> or models:/{body}/<version>")
    elif spec:
        ref = spec
    try:
        if ref.startswith("@"):
            mv = client.get_model_version_by_alias(name, ref[1:])
        else:
            mv = client.get_model_version(name, str(int(ref)))
    except (mlflow.exceptions.MlflowException, ValueError) as exc:
        versions = []
        try:
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        except mlflow.exceptions.MlflowException:
            pass
        if versions:
            raise LookupError(f"model '{name}' has no {'alias ' + ref[1:] if ref.startswith('@') else 'version ' + ref} "
                              f"in the registry at {mlflow.get_tracking_uri()}; its versions are "
                              f"{', '.join(map(str, versions))}") from None
        raise LookupError(
            f"model '{name}' {ref} is not in the registry at {mlflow.get_tracking_uri()} "
            f"({str(exc).splitlines()[0][:200]}). Train and register one first: "
            f"`python jobs/train.py --config configs/train.yaml tracking.model_name={name}`, or point "
            "tracking.uri / MLFLOW_TRACKING_URI at the store that holds it."
        ) from None
    return ResolvedModel(name, str(mv.version), f"models:/{name}/{mv.version}", mv.run_id)


def download_package(model: ResolvedModel) -> ModelPackage:
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model.uri, dst_path=tmp)
        with open(os.path.join(local, "MLmodel")) as f:
            flavor = yaml.safe_load(f)["flavors"]["python_function"]
        return ModelPackage.load(os.path.join(local, flavor["artifacts"]["package"]["path"]))
