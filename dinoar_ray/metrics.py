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


def f1_max(labels, scores, what: str = "F1-max") -> tuple[float | None, float | None]:
    """(best F1 over all thresholds, the threshold that reaches it); (None, None) without positives."""
    from sklearn.metrics import precision_recall_curve

    labels, scores = _check(labels, scores, what)
    if not labels.any():
        return None, None
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(f1[best]), float(thresholds[best]) if len(thresholds) else None


def aupro(masks: list[np.ndarray], maps: list[np.ndarray], fpr_limit: float = 0.3) -> float | None:
    """Area under the per-region-overlap curve up to `fpr_limit` false-positive rate, normalised to [0, 1].

    As defined for MVTec AD: every connected ground-truth region counts equally, however large;
    FPR is over all normal pixels of all images. Exact: one sort over every pixel, where each
    anomalous pixel adds 1 / (size of its region) to the summed overlap when the threshold passes it.
    """
    from scipy.ndimage import label

    if len(masks) != len(maps):
        raise ValueError(f"AUPRO: {len(masks)} masks but {len(maps)} maps")
    weights, scores, normal = [], [], []
    n_regions = 0
    for mask, amap in zip(masks, maps):
        mask, amap = np.asarray(mask, bool), np.asarray(amap, np.float64)
        if mask.shape != amap.shape:
            raise ValueError(f"AUPRO: mask {mask.shape} and map {amap.shape} differ in shape")
        if np.isnan(amap).any():
            raise ValueError("AUPRO: maps contain NaN")
        regions, count = label(mask)
        sizes = np.bincount(regions.ravel())
        w = np.zeros(amap.size)
        positive = regions.ravel() > 0
        w[positive] = 1.0 / sizes[regions.ravel()[positive]]
        weights.append(w)
        scores.append(amap.ravel())
        normal.append(~mask.ravel())
        n_regions += count
    if n_regions == 0:
        return None
    w, s, neg = np.concatenate(weights), np.concatenate(scores), np.concatenate(normal)
    if not neg.any():
        return None
    order = np.argsort(-s, kind="stable")
    s, w, neg = s[order], w[order], neg[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # one curve point per distinct threshold
    pro = np.r_[0.0, (np.cumsum(w) / n_regions)[last_of_tie]]
    fpr = np.r_[0.0, (np.cumsum(neg) / neg.sum())[last_of_tie]]
    # Integrate PRO over FPR up to the limit, interpolating the crossing point.
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit:
        i = np.searchsorted(fpr, fpr_limit)
        if i < len(fpr):
            y_end = pro[i - 1] + (pro[i] - pro[i - 1]) * (fpr_limit - fpr[i - 1]) / max(fpr[i] - fpr[i - 1], 1e-12)
            x, y = np.r_[x, fpr_limit], np.r_[y, y_end]
    return float(np.trapezoid(y, x) / fpr_limit)
