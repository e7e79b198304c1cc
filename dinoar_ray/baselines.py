"""Baselines on the same cached embeddings as the AR model, so comparisons are fair.

- KNNBank: AnomalyDINO / PatchCore style memory bank: per-patch cosine distance to the nearest
  training patch; exact search in torch, chunked over the bank so memory stays bounded; optional
  random or greedy-coreset subsampling.
- GaussianPositions: PaDiM style: per grid position a mean and a Ledoit-Wolf shrinkage
  covariance; the map is the Mahalanobis distance.
Both produce [B, h, w] maps, scored with the same aggregation as the AR model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def greedy_coreset(features: torch.Tensor, k: int, projection_dim: int = 128, seed: int = 0,
                   chunk: int = 65536) -> torch.Tensor:
    """Indices of k rows chosen by k-center greedy (PatchCore), on a random projection for speed."""
    n = features.shape[0]
    if k >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    if features.shape[1] > projection_dim:
        proj = torch.randn(features.shape[1], projection_dim, generator=g) / projection_dim ** 0.5
        features = features @ proj
    chosen = [int(torch.randint(n, (1,), generator=g))]
    nearest = torch.full((n,), float("inf"))
    for _ in range(k - 1):
        centre = features[chosen[-1]][None]
        for s in range(0, n, chunk):
            d = torch.cdist(features[s:s + chunk], centre)[:, 0]
            nearest[s:s + chunk] = torch.minimum(nearest[s:s + chunk], d)
        chosen.append(int(nearest.argmax()))
    return torch.tensor(chosen)


class KNNBank:
    def __init__(self, bank: torch.Tensor, chunk: int = 16384):
        self.bank = F.normalize(bank.float(), dim=1)  # [N, C], unit rows
        self.chunk = chunk

    @classmethod
    def fit(cls, embeddings: torch.Tensor, subsample: str = "none", ratio: float = 0.1, seed: int = 0,
            chunk: int = 16384) -> "KNNBank":
        """embeddings [M, C, h, w] of normal images -> a bank of their M*h*w patches (or a subsample)."""
        patches = embeddings.float().permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
        k = max(1, int(round(len(patches) * ratio)))
        if subsample == "random":
            patches = patches[torch.randperm(len(patches), generator=torch.Generator().manual_seed(seed))[:k]]
        elif subsample == "coreset":
            patches = patches[greedy_coreset(F.normalize(patches, dim=1), k, seed=seed)]
        elif subsample != "none":
            raise ValueError(f"subsample: {subsample!r} is not allowed; choose one of none, random, coreset")
        return cls(patches, chunk)

    @torch.no_grad()
    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B, h, w]: 1 - cosine similarity to the nearest bank patch."""
        b, c, h, w = x.shape
        queries = F.normalize(x.float().permute(0, 2, 3, 1).reshape(-1, c), dim=1)
        best = torch.full((queries.shape[0],), -1.0)
        for s in range(0, len(self.bank), self.chunk):
            best = torch.maximum(best, (queries @ self.bank[s:s + self.chunk].T).max(dim=1).values)
        return (1.0 - best).clamp(min=0).view(b, h, w)

    @property
    def nbytes(self) -> int:
        return self.bank.numel() * self.bank.element_size()


class GaussianPositions:
    def __init__(self, mean: torch.Tensor, precision: torch.Tensor):
        self.mean = mean  # [h*w, C]
        self.precision = precision  # [h*w, C, C]

    @classmethod
    def fit(cls, embeddings: torch.Tensor) -> "GaussianPositions":
        """Per-position mean and Ledoit-Wolf shrinkage covariance (scikit-learn), inverted once."""
        from sklearn.covariance import LedoitWolf

        m, c, h, w = embeddings.shape
        per_position = embeddings.double().permute(2, 3, 0, 1).reshape(h * w, m, c)  # [h*w, M, C]
        means, precisions = [], []
        for samples in per_position:
            lw = LedoitWolf().fit(samples.numpy())
            means.append(torch.from_numpy(lw.location_))
            precisions.append(torch.from_numpy(lw.get_precision()))
        return cls(torch.stack(means).float(), torch.stack(precisions).float())

    @torch.no_grad()
    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B, h, w]: Mahalanobis distance at each position."""
        b, c, h, w = x.shape
        d = x.float().permute(0, 2, 3, 1).reshape(b, h * w, c) - self.mean  # [B, h*w, C]
        squared = torch.einsum("bpc,pcd,bpd->bp", d, self.precision, d)
        return squared.clamp(min=0).sqrt().view(b, h, w)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.mean, self.precision))
