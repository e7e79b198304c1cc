"""The spatial autoregressive CNN over DINOv3 patch embeddings (Erdil et al., 2026).

x: [B, C, h, w] grid of patch embeddings. The network predicts every embedding from its
neighbours; the squared prediction error, averaged over channels, is the anomaly map [B, h, w].
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ("causal", "bidirectional", "standard")


def raster_mask(kernel_size: int, mask_type: str) -> torch.Tensor:
    """[k, k] PixelCNN mask in raster order: 'A' hides the centre and the future, 'B' only the future."""
    k, c = kernel_size, kernel_size // 2
    mask = torch.zeros(k, k)
    mask[:c, :] = 1  # rows above
    mask[c, :c] = 1  # left on the centre row
    if mask_type == "B":
        mask[c, c] = 1
    return mask


SCAN_ORDERS = (
    lambda g: g,  # raster
    lambda g: g.flip(-1, -2),  # reverse raster
    lambda g: g.transpose(-1, -2),  # column-major
    lambda g: g.transpose(-1, -2).flip(-1, -2),  # reverse column-major
)


class MaskedConv2d(nn.Conv2d):
    """Dilated conv whose kernel is multiplied by a fixed mask; padding (k//2)*d keeps the grid."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int, mask_type: str | None):
        super().__init__(c_in, c_out, kernel_size, dilation=dilation, padding=(kernel_size // 2) * dilation)
        mask = torch.ones(kernel_size, kernel_size) if mask_type is None else raster_mask(kernel_size, mask_type)
        self.register_buffer("mask", mask[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding, self.dilation)


class ConvStack(nn.Module):
    """num_layers masked convs with ReLU between; the first may use mask 'A', the rest mask 'B'."""

    def __init__(self, c_in: int, hidden: int, kernel_size: int, dilations: list[int], first: str | None, rest: str | None):
        super().__init__()
        self.layers = nn.ModuleList(
            MaskedConv2d(c_in if i == 0 else hidden, hidden, kernel_size, d, first if i == 0 else rest)
            for i, d in enumerate(dilations)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return x  # [B, hidden, h, w]


class ARNet(nn.Module):
    """Predicts each patch embedding from its neighbours.

    causal:        mask A then mask B: (i, j) sees only earlier raster positions.
    bidirectional: four causal stacks, one per scan order (raster, reverse raster, column-major,
                   reverse column-major), fused by a 1x1 conv, so (i, j) sees every position
                   in reach except itself. The authors' "unmasked later layers" would let the
                   centre leak back through a neighbour after two layers; two scan orders alone
                   would leave PixelCNN's blind spots (e.g. one row up, two columns right).
    standard:      plain convs: a reconstruction baseline that sees the centre.
    """

    def __init__(self, channels: int, mode: str = "causal", num_layers: int = 5, hidden: int = 256,
                 kernel_size: int = 3, dilations: list[int] | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"ar.mode: {mode!r} is not allowed; choose one of {', '.join(MODES)}")
        dilations = list(dilations or [4] * num_layers)
        self.mode = mode
        if mode == "bidirectional":
            # Each scan order gets a quarter of the width, so the model stays about the causal size.
            width = max(hidden // len(SCAN_ORDERS), 1)
            self.stacks = nn.ModuleList(ConvStack(channels, width, kernel_size, dilations, "A", "B")
                                        for _ in SCAN_ORDERS)
            self.head = nn.Conv2d(len(SCAN_ORDERS) * width, channels, 1)
        else:
            first, rest = ("A", "B") if mode == "causal" else (None, None)
            self.stack = ConvStack(channels, hidden, kernel_size, dilations, first, rest)
            self.head = MaskedConv2d(hidden, channels, kernel_size, dilations[-1], rest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, h, w] -> prediction [B, C, h, w]."""
        if self.mode == "bidirectional":
            # Each order is an involution of the grid that maps its scan order to raster order.
            views = [order(stack(order(x))) for order, stack in zip(SCAN_ORDERS, self.stacks)]
            return self.head(torch.cat(views, dim=1))
        return self.head(self.stack(x))


def anomaly_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-patch squared prediction error, mean over channels: [B, C, h, w] -> [B, h, w]."""
    return (model(x) - x).pow(2).mean(dim=1)


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """[B, h, w] -> [B, h, w], separable Gaussian blur (sigma in patches), edges replicated."""
    if sigma <= 0:
        return maps
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    out = F.pad(maps[:, None], (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.conv2d(out, kernel.view(1, 1, -1, 1))
    return out[:, 0]


def image_scores(maps: torch.Tensor, aggregation: str = "max", topk_percent: float = 1.0,
                 smooth_sigma: float = 0.0) -> torch.Tensor:
    """[B, h, w] -> [B]: max, or mean of the top-k% patches, optionally of the Gaussian-smoothed map."""
    flat = gaussian_smooth(maps, smooth_sigma).flatten(1)
    if aggregation == "max":
        return flat.max(dim=1).values
    if aggregation == "topk_mean":
        k = max(1, round(flat.shape[1] * topk_percent / 100.0))
        return flat.topk(k, dim=1).values.mean(dim=1)
    raise ValueError(f"score.aggregation: {aggregation!r} is not allowed; choose one of max, topk_mean")


def add_feature_noise(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Gaussian noise at `scale` x the per-sample, per-channel std of the embedding (paper's augmentation)."""
    std = x.std(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
    return x + torch.randn_like(x) * scale * std
