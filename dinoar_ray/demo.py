"""The demo: sample data from real photographs, then embed -> train -> register -> score -> evaluate."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw

from . import tracking
from .config import Config
from .evaluate import run_evaluation
from .score import run_scoring
from .sources import NormalsLayout, detect_layout
from .train import run_training


def make_sample_dataset(root: str, n_train: int = 48, n_good: int = 12, n_defect: int = 18, seed: int = 0) -> str:
    """An MVTec-layout dataset cut from scikit-image's bundled brick-wall photograph.

    Normal images are random crops of varying size; defect images get a patch of another
    photograph (gravel) pasted inside an ellipse or polygon, and that exact region is the mask.
    """
    from skimage import data as photos

    rng = np.random.default_rng(seed)
    texture, foreign = photos.brick(), photos.gravel()  # 512x512 uint8 greyscale photographs

    def crop(img: np.ndarray) -> np.ndarray:
        h, w = int(rng.integers(112, 161)), int(rng.integers(112, 161))
        y, x = int(rng.integers(0, img.shape[0] - h)), int(rng.integers(0, img.shape[1] - w))
        return img[y:y + h, x:x + w].copy()

    def save(array: np.ndarray, *parts: str) -> None:
        path = os.path.join(root, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(array).save(path)

    for i in range(n_train):
        save(crop(texture), "train", "good", f"{i:03d}.png")
    for i in range(n_good):
        save(crop(texture), "test", "good", f"{i:03d}.png")
    for i in range(n_defect):
        image = crop(texture)
        h, w = image.shape
        ry, rx = int(rng.integers(8, h // 5)), int(rng.integers(8, w // 5))
        cy, cx = int(rng.integers(ry, h - ry)), int(rng.integers(rx, w - rx))
        mask_img = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask_img)
        if i % 2:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, 6))
            draw.polygon([(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles], fill=255)
        mask = np.asarray(mask_img) > 0
        patch = crop(foreign)[:h, :w]
        patch = np.pad(patch, ((0, h - patch.shape[0]), (0, w - patch.shape[1])), mode="reflect")
        image[mask] = patch[mask]
        save(image, "test", "foreign", f"{i:03d}.png")
        save((mask * 255).astype(np.uint8), "ground_truth", "foreign", f"{i:03d}_mask.png")
    return root


def absolute_sqlite(uri: str) -> str:
    """sqlite:///mlflow.db is relative to the working directory; print where it really is."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + os.path.abspath(uri[len(prefix):])
    return uri


def run_demo(cfg: Config, data: str = "") -> dict:
    # One output folder per dataset, so demos on different data do not overwrite each other.
    name = os.path.basename(os.path.normpath(data)) if data else "sample"
    out = os.path.join(os.path.abspath(cfg.output_dir), name)
    cfg.output_dir = out
    root = os.path.abspath(data) if data else make_sample_dataset(os.path.join(out, "sample_data"))
    layout = detect_layout(root)
    if isinstance(layout, NormalsLayout):
        raise ValueError(f"--data {data}: needs an MVTec (train/good/, test/) or BMAD (train/good/img/) layout")
    cfg.data.root = root
    trained = run_training(cfg)
    scores_path = os.path.join(out, "scores")
    scored = run_scoring(cfg, layout.test_dir, scores_path, root=root)
    evaluated = run_evaluation(cfg, scores_path, root, run_id=scored["run_id"])
    report = {"data": root, "backbone": trained["backbone"], "model_uri": trained["model_uri"],
              "train_run_id": trained["run_id"], "score_run_id": scored["run_id"],
              "threshold": trained["threshold"], "scores": scores_path, "package": trained["package"],
              "tracking_uri": absolute_sqlite(tracking.tracking_uri(cfg)), "score_rows": scored["rows"],
              "score_errors": scored["errors"], "anomalies_flagged": scored["anomalies"], **evaluated}
    with open(os.path.join(out, "demo_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def format_report(report: dict) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["", "=" * 70, "dinoar-ray demo results", "=" * 70]
    if report["backbone"].startswith("random-init"):
        lines.append("NOTE: backbone is RANDOM-INIT (real DINOv3 weights unavailable): metrics are a smoke test.")
    for key in ("image_auroc", "image_aupr", "pixel_auroc", "pixel_aupr", "aupro", "threshold_fpr",
                "threshold_tpr", "images", "normal_images", "anomalous_images",
                "errors", "anomalies_flagged", "threshold", "backbone", "model_uri", "train_run_id",
                "score_run_id", "tracking_uri", "data", "scores", "package"):
        lines.append(f"  {key:18s} {fmt(report.get(key))}")
    return "\n".join(lines)
