import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

from dinoar_ray.config import load_config  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def tiny_package(seed: int = 0):
    """A model package with a random AR head on the tiny random-init backbone (no training needed)."""
    import torch

    from dinoar_ray.ar_model import ARNet
    from dinoar_ray.backbone import resolve
    from dinoar_ray.package import ModelPackage

    torch.manual_seed(seed)
    ar = dict(mode="causal", num_layers=2, hidden=16, kernel_size=3, dilations=[1, 2])
    return ModelPackage(backbone={**resolve("random-init:tiny").to_dict(), "img_size": 64, "resize": "squash",
                                  "channels": 32, "grid": 4},
                        ar=ar, score={"aggregation": "max", "topk_percent": 1.0}, state_dict=ARNet(32, **ar).state_dict())


def tiny_config(tmp_path, **extra):
    """A config that runs the real code path in seconds: tiny random-init DINOv3, 64 px, small AR."""
    overrides = [
        "backbone.name=random-init:tiny", "backbone.img_size=64", "backbone.batch_size=8",
        "ar.num_layers=2", "ar.hidden=16", "ar.dilations=[1,2]",
        "train.epochs=2", "train.batch_size=8", "train.num_workers=2", "train.holdout_fraction=0.25",
        "score.batch_size=8",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"output_dir={tmp_path}/out",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, overrides)
