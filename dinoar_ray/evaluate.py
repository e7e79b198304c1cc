"""Evaluation of score rows against a labelled test set (MVTec layout): image and pixel metrics."""
from __future__ import annotations

import logging
import os

import mlflow
import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from . import metrics, tracking
from .backbone import PATCH_SIZE, content_box
from .config import Config
from .sources import detect_layout

log = logging.getLogger(__name__)


def upsample(heatmap: np.ndarray, height: int, width: int, resize: str = "squash", img_size: int = 0) -> np.ndarray:
    """Token-level map [h, w] -> [height, width], bilinear, undoing the backbone's resize policy."""
    t = torch.from_numpy(np.asarray(heatmap, dtype=np.float32))[None, None]
    if resize == "pad":
        size = img_size or t.shape[-1] * PATCH_SIZE
        top, left, rows, cols = content_box(height, width, size, resize)
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[..., top:top + rows,
                                                                                       left:left + cols]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def load_mask(path: str, height: int, width: int) -> np.ndarray:
    if not os.path.exists(path):
        raise FileNotFoundError(f"ground-truth mask missing: {path}")
    mask = np.asarray(Image.open(path).convert("L")) > 127
    if mask.shape != (height, width):
        raise ValueError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}")
    return mask


def evaluate_scores(scores_path: str, data_root: str, log_to_mlflow: bool = True, resize: str = "squash") -> dict:
    """Image and pixel metrics of a scores Parquet on a labelled test split (MVTec or BMAD layout).

    Image ids must be relative to the dataset root (as the demo and `data.root` scoring make them).
    On a folder of normals only the threshold's false-positive rate is defined.
    """
    layout = detect_layout(data_root)
    table = pq.read_table(scores_path, columns=["image_id", "status", "score", "is_anomalous", "heatmap",
                                                "heatmap_shape", "width", "height"]).to_pylist()
    ok = [r for r in table if r["status"] == "ok"]
    heatmaps = [np.asarray(r["heatmap"], dtype=np.float32).reshape(r["heatmap_shape"]) for r in ok]
    flagged = [r["is_anomalous"] for r in ok] if ok and ok[0]["is_anomalous"] is not None else None
    result = {"images": len(table), "errors": len(table) - len(ok),
              **evaluate_maps(layout, [r["image_id"] for r in ok], [(r["height"], r["width"]) for r in ok],
                              heatmaps, np.array([r["score"] for r in ok], dtype=np.float64), flagged, resize)}
    if log_to_mlflow and mlflow.active_run():
        mlflow.log_metrics({k: v for k, v in result.items() if isinstance(v, (int, float)) and v is not None})
    return result


def evaluate_maps(layout, image_ids: list[str], sizes: list[tuple[int, int]], heatmaps: list[np.ndarray],
                  image_scores: np.ndarray, flagged: list[bool] | None = None, resize: str = "squash") -> dict:
    """Every metric of one detector's token maps and image scores on a labelled test split.

    Maps are upsampled to each image's own size before the pixel metrics.
    """
    labels = np.array([layout.is_anomalous(i) for i in image_ids], dtype=bool)
    maps, masks = [], []
    for image_id, (h, w), heatmap in zip(image_ids, sizes, heatmaps):
        maps.append(upsample(heatmap, h, w, resize))
        mask_path = layout.mask_path(image_id)
        masks.append(load_mask(mask_path, h, w) if mask_path else np.zeros((h, w), bool))
    px_scores = np.concatenate([m.ravel() for m in maps]) if maps else np.zeros(0)
    px_labels = np.concatenate([m.ravel() for m in masks]) if masks else np.zeros(0, bool)
    result = {
        "normal_images": int((~labels).sum()), "anomalous_images": int(labels.sum()),
        "image_auroc": metrics.auroc(labels, image_scores, "image AUROC"),
        "image_aupr": metrics.aupr(labels, image_scores, "image AUPR"),
        "image_f1_max": metrics.f1_max(labels, image_scores, "image F1-max")[0],
        "pixel_auroc": metrics.auroc(px_labels, px_scores, "pixel AUROC"),
        "pixel_aupr": metrics.aupr(px_labels, px_scores, "pixel AUPR"),
        "pixel_f1_max": metrics.f1_max(px_labels, px_scores, "pixel F1-max")[0],
        "aupro": metrics.aupro(masks, maps),
    }
    if flagged is not None:  # the calibrated threshold, judged on labelled data
        flagged = np.asarray(flagged, dtype=bool)
        result["threshold_fpr"] = float(flagged[~labels].mean()) if (~labels).any() else None
        result["threshold_tpr"] = float(flagged[labels].mean()) if labels.any() else None
    return result


def run_evaluation(cfg: Config, scores_path: str, data_root: str, run_id: str | None = None) -> dict:
    """Metrics of a scores Parquet, logged to the given MLflow run (the scoring run) or a new one."""
    if not os.path.exists(scores_path):
        raise FileNotFoundError(f"no scores at {scores_path}; run `dinoar score` (or jobs/score.py) first")
    detect_layout(data_root)  # a missing dataset folder fails here, before a run is opened
    tracking.setup(cfg)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else "evaluate"):
        return evaluate_scores(scores_path, data_root, resize=cfg.backbone.resize)
