"""Quality benchmark: the AR model (every mode) against kNN and Gaussian baselines, all fitted on the
same cached training embeddings and evaluated on the same test set with the same metrics."""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from typing import Callable

import mlflow
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data
import torch

from . import metrics, tracking
from .ar_model import ARNet, anomaly_map, image_scores
from .backbone import resolve_config
from .baselines import GaussianPositions, KNNBank
from .config import Config
from .evaluate import evaluate_maps
from .runtime import init_ray
from .sources import NormalsLayout, detect_layout
from .train import embed_to_cache, fit

log = logging.getLogger(__name__)
COLUMNS = ["image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_aupr", "pixel_f1_max", "aupro",
           "fit_s", "ms_per_image", "model_mb"]
# Image-score aggregations compared on every detector's maps: (name, aggregation, topk_percent, smooth_sigma).
AGGREGATIONS = [("max", "max", 1.0, 0.0), ("top1%", "topk_mean", 1.0, 0.0), ("top5%", "topk_mean", 5.0, 0.0),
                ("top10%", "topk_mean", 10.0, 0.0), ("max-s1", "max", 1.0, 1.0), ("top5%-s1", "topk_mean", 5.0, 1.0)]


def load_embeddings(cache: str) -> tuple[list[str], list[tuple[int, int]], torch.Tensor]:
    table = pq.read_table(cache)
    table = table.filter(pc.equal(table["status"], "ok"))
    grids = table["embedding"].combine_chunks().to_numpy().astype(np.float32)  # Ray tensor column: [N, C, h, w]
    sizes = list(zip(table["height"].to_pylist(), table["width"].to_pylist()))
    return table["image_id"].to_pylist(), sizes, torch.from_numpy(grids)


def time_maps(map_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 32) -> tuple[torch.Tensor, float]:
    """All maps and the milliseconds per image it took (after the head, on cached embeddings)."""
    start = time.perf_counter()
    with torch.no_grad():
        maps = torch.cat([map_fn(x[i:i + batch]) for i in range(0, len(x), batch)])
    return maps, 1000 * (time.perf_counter() - start) / max(len(x), 1)


def markdown_table(rows: dict[str, dict], columns: list[str] = COLUMNS) -> str:
    def cell(v):
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    head = "| detector | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    return head + "".join(f"| {name} | " + " | ".join(cell(r.get(c)) for c in columns) + " |\n"
                          for name, r in rows.items())


def aggregation_sweep(maps: torch.Tensor, labels: np.ndarray) -> dict[str, float | None]:
    """Image AUROC of one detector's maps under every aggregation in AGGREGATIONS."""
    return {name: metrics.auroc(labels, image_scores(maps, agg, k, sigma).numpy(), f"image AUROC ({name})")
            for name, agg, k, sigma in AGGREGATIONS}


def run_quality_benchmark(cfg: Config, data_root: str, modes: tuple[str, ...] = ("causal", "bidirectional", "standard"),
                          knn_subsample: str = "none", knn_ratio: float = 0.1) -> dict:
    init_ray(cfg)
    tracking.setup(cfg)
    layout = detect_layout(data_root)
    if isinstance(layout, NormalsLayout):
        raise ValueError(f"{data_root}: the benchmark needs a labelled test split (MVTec or BMAD layout)")
    resolved = resolve_config(cfg.backbone)
    out = os.path.abspath(cfg.output_dir)
    root = os.path.abspath(data_root)
    caches = {split: os.path.join(out, "embeddings", split) for split in ("train", "test")}
    with mlflow.start_run(run_name=f"benchmark-{os.path.basename(root)}") as run:
        tracking.log_params({**cfg.flat(), "backbone": resolved.name, "data": root, "knn_subsample": knn_subsample})
        t0 = time.perf_counter()
        embed_to_cache(cfg, resolved, layout.train_dir, caches["train"], root)
        embed_to_cache(cfg, resolved, layout.test_dir, caches["test"], root)
        embed_s = time.perf_counter() - t0
        _, _, train = load_embeddings(caches["train"])
        test_ids, sizes, test = load_embeddings(caches["test"])
        n_images = len(train) + len(test)
        score = cfg.score

        detectors: dict[str, tuple[Callable, float, int]] = {}
        for mode in modes:
            mode_cfg = copy.deepcopy(cfg)
            mode_cfg.ar.mode = mode
            t0 = time.perf_counter()
            state, _ = fit(mode_cfg, ray.data.read_parquet(caches["train"]).filter(expr="status == 'ok'")
                           .select_columns(["embedding"]), train.shape[1], run_name=f"bench-{run.info.run_id}-{mode}")
            model = ARNet(train.shape[1], **vars(mode_cfg.ar)).eval()
            model.load_state_dict(state)
            size = sum(v.numel() * v.element_size() for v in state.values())
            detectors[f"ar-{mode}"] = (lambda x, m=model: anomaly_map(m, x), time.perf_counter() - t0, size)
        t0 = time.perf_counter()
        knn = KNNBank.fit(train, knn_subsample, knn_ratio)
        detectors[f"knn-{knn_subsample}"] = (knn.maps, time.perf_counter() - t0, knn.nbytes)
        t0 = time.perf_counter()
        gaussian = GaussianPositions.fit(train)
        detectors["gaussian"] = (gaussian.maps, time.perf_counter() - t0, gaussian.nbytes)

        rows, sweep = {}, {}
        labels = np.array([layout.is_anomalous(i) for i in test_ids], dtype=bool)
        for name, (map_fn, fit_s, nbytes) in detectors.items():
            maps, ms = time_maps(map_fn, test)
            sweep[name] = aggregation_sweep(maps, labels)
            scores = image_scores(maps, score.aggregation, score.topk_percent, score.smooth_sigma).numpy()
            result = evaluate_maps(layout, test_ids, sizes, list(maps.numpy()), scores.astype(np.float64),
                                   resize=cfg.backbone.resize)
            rows[name] = {**result, "fit_s": fit_s, "ms_per_image": ms, "model_mb": nbytes / 1e6}
            mlflow.log_metrics({f"{name}.{k}": v for k, v in rows[name].items() if isinstance(v, (int, float))})
            log.info("%s: %s", name, {k: rows[name].get(k) for k in COLUMNS})
        report = {"backbone": resolved.name, "data": root, "images": n_images, "embed_s": embed_s,
                  "embed_ms_per_image": 1000 * embed_s / max(n_images, 1), "aggregation": score.aggregation,
                  "detectors": rows, "image_auroc_by_aggregation": sweep}
        table = (markdown_table(rows) + "\nImage AUROC by image-score aggregation (-s1: Gaussian smoothing, "
                 "sigma 1 patch):\n\n" + markdown_table(sweep, [a[0] for a in AGGREGATIONS]))
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "benchmark.md"), "w") as f:
            f.write(f"Backbone {resolved.name}, data {root}, {n_images} images, embedding "
                    f"{report['embed_ms_per_image']:.1f} ms/image, score aggregation {score.aggregation}.\n\n{table}")
        with open(os.path.join(out, "benchmark.json"), "w") as f:
            json.dump(report, f, indent=2)
        mlflow.log_artifact(os.path.join(out, "benchmark.md"))
        mlflow.log_artifact(os.path.join(out, "benchmark.json"))
    print(table)
    return report
