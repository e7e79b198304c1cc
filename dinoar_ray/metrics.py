"""Detection and segmentation metrics (scikit-learn underneath)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def _check(labels: np.ndarray, scores: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels).ravel().astype(bool), np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{what}: {labels.size} labels but {scores.size} scores")
    if np.isnan(scores).any():
        raise ValueError(f"{what}: {int(np.isnan(scores).sum())} scores are NaN")
    return labels, scores


def auroc(labels, scores, what: str = "AUROC") -> float | None:
    """Area under the ROC curve; None when only one class is present (undefined)."""
    labels, scores = _check(labels, scores, what)
    if labels.all() or not labels.any():
        return None
    return float(roc_auc_score(labels, scores))


def aupr(labels, scores, what: str = "AUPR") -> float | None:
    """Average precision; None without positives."""
    labels, scores = _check(labels, scores, what)
    if not labels.any():
        return None
    return float(average_precision_score(labels, scores))
