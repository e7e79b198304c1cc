"""Frozen DINOv3 ViT: resolve where the weights come from, load them, embed images into patch grids.

The driver resolves a spec once (quickly, so an offline machine decides in seconds); every actor
then loads the same resolved spec. Random-init weights are seeded, so all actors build the same net.
"""
from __future__ import annotations

import logging
import os
import socket
import urllib.parse
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .cnn_backbone import PRESETS as CNN_PRESETS
from .cnn_backbone import PYPI_PREFIX, TIMM_PREFIX, weights_path
from .cnn_backbone import check_installed as check_timm_installed

log = logging.getLogger(__name__)

PATCH_SIZE = 16
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_PREFIX = "random-init"
# Architectures for random-init weights. vits16 matches facebook/dinov3-vits16-pretrain-lvd1689m.
RANDOM_PRESETS = {
    "vits16": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                   num_register_tokens=4, layerscale_value=1e-5),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_register_tokens=4),
}


class BackboneUnavailable(RuntimeError):
    """The DINOv3 weights cannot be had; the message says how to provide them."""


@dataclass(frozen=True)
class ResolvedBackbone:
    source: str  # hub id, local directory, random-init:<preset>, or a timm architecture
    revision: str
    kind: str  # hub | local | random | timm
    name: str  # what rows, MLflow and the package record
    weights: str = ""  # timm only: a weights file, or pypi:<module> for weights shipped in a wheel
    stages: tuple[int, ...] = ()  # timm only: the feature stages concatenated into the grid

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))  # JSON round-trips give lists

    def to_dict(self) -> dict:
        return {**asdict(self), "stages": list(self.stages)}


def how_to_provide(spec: str, reason: str) -> str:
    hub_id = spec if not spec.startswith(("/", ".")) else "facebook/dinov3-vits16-pretrain-lvd1689m"
    return (
        f"DINOv3 weights for '{spec}' are not available: {reason}.\n"
        "Provide them in one of these ways:\n"
        f"  1. accept the licence at https://huggingface.co/{hub_id} and export HF_TOKEN=<token with read access>;\n"
        f"  2. download once elsewhere (`hf download {hub_id} --local-dir /models/dinov3-vits16`),\n"
        "     copy the folder to this machine (or shared storage) and set backbone.name=/models/dinov3-vits16;\n"
        "  3. for a smoke test only: backbone.name=random-init (meaningless scores, marked random-init everywhere)."
    )


def _hub_reachable(timeout_s: float) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urllib.parse.urlparse(endpoint).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def resolve(spec: str, revision: str = "main", allow_random_fallback: bool = False,
            timeout_s: float = 5.0, weights: str = "", stages: list[int] | tuple[int, ...] = (2, 3)) -> ResolvedBackbone:
    """Decide where the weights come from, without waiting minutes on a machine with no network.

    `weights` and `stages` only matter for the timm control backbones (timm:<arch>, efficientnet-lite0).
    """
    if spec.startswith(TIMM_PREFIX) or spec in CNN_PRESETS:
        arch, weights = CNN_PRESETS.get(spec, (spec[len(TIMM_PREFIX):], weights))
        check_timm_installed()
        weights_path(weights)  # fail now, naming the file, rather than in every actor
        label = weights if weights.startswith(PYPI_PREFIX) else os.path.basename(weights)
        stages = tuple(int(s) for s in stages)
        return ResolvedBackbone(arch, "", "timm", f"{TIMM_PREFIX}{arch}[{','.join(map(str, stages))}]@{label}", weights, stages)
    if spec.startswith(RANDOM_PREFIX):
        preset = spec.partition(":")[2] or "vits16"
        if preset not in RANDOM_PRESETS:
            raise ValueError(f"backbone.name: unknown random-init preset {preset!r}; choose one of "
                             f"{', '.join(RANDOM_PREFIX + ':' + p for p in RANDOM_PRESETS)}")
        return ResolvedBackbone(f"{RANDOM_PREFIX}:{preset}", "", "random", f"{RANDOM_PREFIX}:{preset}")
    if os.path.isdir(spec):
        if not os.path.exists(os.path.join(spec, "config.json")):
            raise BackboneUnavailable(f"{spec} is a directory but has no config.json; it must be a Hugging Face "
                                      "model folder (config.json + model.safetensors)")
        path = os.path.abspath(spec)
        return ResolvedBackbone(path, "", "local", path)
    if spec.startswith(("/", "./", "../")):
        raise BackboneUnavailable(how_to_provide(spec, f"local directory {spec} does not exist"))

    reason = _hub_unavailable_reason(spec, revision, timeout_s)
    if reason is None:
        return ResolvedBackbone(spec, revision, "hub", f"{spec}@{revision}")
    if not allow_random_fallback:
        raise BackboneUnavailable(how_to_provide(spec, reason))
    banner = "!" * 78
    log.warning("\n%s\n%s\nFALLING BACK TO RANDOM-INIT DINOv3 WEIGHTS: the scores below mean nothing about\n"
                "real DINOv3 quality. Everything is marked 'random-init'.\n%s", banner, how_to_provide(spec, reason), banner)
    return resolve(f"{RANDOM_PREFIX}:vits16")


def resolve_config(bb) -> ResolvedBackbone:
    """resolve() with the fields of a BackboneConfig."""
    return resolve(bb.name, bb.revision, bb.allow_random_fallback, bb.hub_timeout_s, bb.weights, bb.stages)


def ensure_available(resolved: ResolvedBackbone, timeout_s: float) -> None:
    """Before a scoring job starts its actors: the package's backbone weights must still be reachable."""
    if resolved.kind == "timm":
        check_timm_installed()
        weights_path(resolved.weights)
    else:
        resolve(resolved.source, resolved.revision or "main", timeout_s=timeout_s)


def _hub_unavailable_reason(spec: str, revision: str, timeout_s: float) -> str | None:
    """None when the weights are in the local cache or downloadable; else why not."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    patterns = ["*.json", "*.safetensors"]
    try:
        snapshot_download(spec, revision=revision, local_files_only=True, allow_patterns=patterns)
        return None
    except Exception:  # not cached: ask the hub, if there is one to ask
        pass
    if _offline():
        return "HF_HUB_OFFLINE is set and they are not in the local Hugging Face cache"
    if not _hub_reachable(timeout_s):
        return f"the hub could not be reached within {timeout_s:.0f}s (no network?)"
    try:
        snapshot_download(spec, revision=revision, allow_patterns=patterns, etag_timeout=timeout_s)
        return None
    except GatedRepoError:
        return "the repository is gated and this machine has no token with access"
    except RepositoryNotFoundError:
        return "no such repository on the hub (or it is private)"
    except Exception as exc:  # network errors of every kind
        return f"download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"


def load_model(resolved: ResolvedBackbone, device: str = "cpu") -> torch.nn.Module:
    """The frozen DINOv3ViTModel for a resolved spec, in eval mode."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    if resolved.kind == "random":
        preset = resolved.source.partition(":")[2]
        torch.manual_seed(0)  # identical weights in every actor and every run
        model = DINOv3ViTModel(DINOv3ViTConfig(patch_size=PATCH_SIZE, **RANDOM_PRESETS[preset]))
    else:
        kwargs = {"revision": resolved.revision} if resolved.kind == "hub" else {}
        model = DINOv3ViTModel.from_pretrained(resolved.source, **kwargs)
    model.requires_grad_(False)
    return model.eval().to(device)


def content_box(height: int, width: int, img_size: int, resize: str) -> tuple[int, int, int, int]:
    """Where the image lands in the square input: (top, left, rows, cols)."""
    if resize == "squash":
        return 0, 0, img_size, img_size
    scale = img_size / max(height, width)
    rows, cols = max(1, round(height * scale)), max(1, round(width * scale))
    return (img_size - rows) // 2, (img_size - cols) // 2, rows, cols


def preprocess(images: list[np.ndarray], img_size: int, resize: str = "squash") -> torch.Tensor:
    """RGB uint8 [H, W, 3] arrays of any sizes -> normalised [B, 3, img_size, img_size].

    squash: stretch to the square. pad: keep the aspect ratio, centre, pad with the ImageNet mean
    (zero after normalisation), so thin or tiny images are not distorted.
    """
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = torch.zeros(len(images), 3, img_size, img_size)
    for i, image in enumerate(images):
        x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float() / 255.0
        top, left, rows, cols = content_box(image.shape[0], image.shape[1], img_size, resize)
        x = F.interpolate(x, size=(rows, cols), mode="bilinear", align_corners=False, antialias=True)
        out[i, :, top:top + rows, left:left + cols] = (x[0].clamp(0, 1) - mean) / std
    return out


class DINOv3Patches(nn.Module):
    """pixels [B, 3, S, S] -> final-norm patch tokens as a grid [B, C, S/16, S/16], CLS and registers dropped."""

    def __init__(self, vit: nn.Module, grid: int):
        super().__init__()
        self.vit = vit
        self.channels = vit.config.hidden_size
        self.num_prefix = 1 + vit.config.num_register_tokens  # CLS + registers
        self.grid = grid

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = self.vit(pixel_values=pixels).last_hidden_state  # [B, 1+R+h*w, C], after final norm
        patches = tokens[:, self.num_prefix:, :]
        b, n, c = patches.shape
        return patches.transpose(1, 2).reshape(b, c, self.grid, self.grid)  # row-major: n = h*w


class Backbone:
    """The frozen embedder: images -> [B, C, img_size/16, img_size/16] (DINOv3, or a timm control CNN)."""

    def __init__(self, resolved: ResolvedBackbone, img_size: int, device: str = "cpu", resize: str = "squash"):
        self.resolved = resolved
        self.img_size = img_size
        self.resize = resize
        self.device = device
        if resolved.kind == "timm":
            from .cnn_backbone import CNNFeatures
            self.grid = img_size // PATCH_SIZE  # the grid a ViT-S/16 would give, so configs carry over
            encoder = CNNFeatures(resolved.source, resolved.weights, resolved.stages, self.grid)
            encoder.requires_grad_(False)
        else:
            vit = load_model(resolved)
            self.grid = img_size // vit.config.patch_size
            encoder = DINOv3Patches(vit, self.grid)
        self.encoder = encoder.eval().to(device)
        self.channels = encoder.channels

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        pixels = preprocess(images, self.img_size, self.resize).to(self.device)
        return self.encoder(pixels).float()  # [B, C, h, w]
