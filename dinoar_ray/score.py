"""The scoring stage: backbone + AR head fused in one actor, rows -> score rows -> Parquet."""
from __future__ import annotations

import datetime as dt
import logging
import os

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from safetensors.torch import save as save_bytes

from . import tracking
from .ar_model import anomaly_map, image_scores
from .backbone import Backbone, ensure_available
from .config import Config
from .embed import check_error_fraction, decode_rows, device_for
from .images import DecodeOptions
from .package import ModelPackage
from .runtime import init_ray
from .sources import check_source, read_images

log = logging.getLogger(__name__)


def score_schema(heatmap_dtype: str = "float32") -> pa.Schema:
    """The score-row contract (DESIGN.md): plain Arrow types that pandas, duckdb and Spark read."""
    return pa.schema([
        ("image_id", pa.string()), ("source_uri", pa.string()), ("content_sha256", pa.string()),
        ("width", pa.int32()), ("height", pa.int32()),
        ("status", pa.string()), ("error", pa.string()),
        ("score", pa.float32()), ("is_anomalous", pa.bool_()),
        ("heatmap", pa.list_(pa.float16() if heatmap_dtype == "float16" else pa.float32())),
        ("heatmap_shape", pa.list_(pa.int32())),
        ("heatmap_png", pa.string()),
        ("model_name", pa.string()), ("model_version", pa.string()), ("model_uri", pa.string()),
        ("backbone", pa.string()), ("run_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
    ])


class ImageScorer:
    """Backbone + AR head on one device: decoded rows -> maps and scores. Used by the Ray actor and pyfunc."""

    def __init__(self, package: ModelPackage, decode: DecodeOptions | None = None, use_gpu: bool = False):
        self.package = package
        self.device = device_for(use_gpu)
        self.backbone = Backbone(package.resolved_backbone, package.backbone["img_size"], self.device,
                                 package.backbone.get("resize", "squash"))
        self.model = package.build_model().to(self.device)
        self.decode = decode or DecodeOptions()

    @torch.inference_mode()
    def maps_and_scores(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        grids = self.backbone.embed(images)  # [B, C, h, w]
        maps = anomaly_map(self.model, grids)  # [B, h, w]
        score = self.package.score
        scores = image_scores(maps, score["aggregation"], score["topk_percent"], score.get("smooth_sigma", 0.0))
        return maps.cpu().numpy(), scores.cpu().numpy()

    def score_batch(self, batch: dict) -> dict:
        """Rows with bytes -> provenance + score + is_anomalous + heatmap for every row, errors included."""
        meta, ok, images = decode_rows(batch, self.decode)
        n = len(meta["image_id"])
        scores = np.full(n, np.nan, dtype=np.float32)
        maps: list = [None] * n
        if images:
            ok_maps, ok_scores = self.maps_and_scores(images)
            scores[ok] = ok_scores
            for i, m in zip(ok, ok_maps):
                maps[i] = m
        threshold = self.package.threshold
        anomalous = [None if (threshold is None or maps[i] is None) else bool(scores[i] > threshold) for i in range(n)]
        return {**meta, "score": scores, "is_anomalous": anomalous, "maps": maps}

    def score_bytes(self, data: list[bytes]) -> dict:
        n = len(data)
        return self.score_batch({"image_id": [str(i) for i in range(n)], "source_uri": [""] * n, "bytes": data})


class Scorer:
    """Ray Data actor: score rows as an Arrow table in the score-row schema."""

    def __init__(self, package_meta: dict, weights: bytes, provenance: dict, decode: dict,
                 heatmap_dtype: str, use_gpu: bool = False):
        self.scorer = ImageScorer(ModelPackage.from_parts(package_meta, weights), DecodeOptions(**decode), use_gpu)
        self.provenance = provenance
        self.schema = score_schema(heatmap_dtype)
        self.heatmap_np = np.float16 if heatmap_dtype == "float16" else np.float32

    def __call__(self, batch: dict) -> pa.Table:
        r = self.scorer.score_batch(batch)
        n = len(r["image_id"])
        ok = [m is not None for m in r["maps"]]
        columns = {
            "image_id": r["image_id"], "source_uri": r["source_uri"], "content_sha256": r["content_sha256"],
            "width": [int(w) if k else None for w, k in zip(r["width"], ok)],
            "height": [int(h) if k else None for h, k in zip(r["height"], ok)],
            "status": r["status"], "error": r["error"],
            "score": [float(s) if k else None for s, k in zip(r["score"], ok)],
            "is_anomalous": r["is_anomalous"],
            "heatmap": [m.astype(self.heatmap_np).ravel() if m is not None else None for m in r["maps"]],
            "heatmap_shape": [list(m.shape) if m is not None else None for m in r["maps"]],
            "heatmap_png": [None] * n,
            **{k: [v] * n for k, v in self.provenance.items()},
            "scored_at": [dt.datetime.now(dt.timezone.utc)] * n,
        }
        return pa.table({name: pa.array(list(columns[name]), type=self.schema.field(name).type)
                         for name in self.schema.names}, schema=self.schema)


def score_dataset(rows: ray.data.Dataset, package: ModelPackage, provenance: dict, cfg: Config) -> ray.data.Dataset:
    # Weights travel as safetensors bytes, so workers need no shared filesystem.
    weights = save_bytes({k: v.contiguous() for k, v in package.state_dict.items()})
    return rows.map_batches(
        Scorer,
        fn_constructor_kwargs=dict(package_meta=package.meta(), weights=weights, provenance=provenance,
                                   decode=cfg.data.decode_options(), heatmap_dtype=cfg.score.heatmap_dtype,
                                   use_gpu=cfg.ray.use_gpu),
        batch_size=cfg.score.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.ray.embed_concurrency),
        num_cpus=cfg.ray.actor_cpus,
        num_gpus=1 if cfg.ray.use_gpu else 0,
    )


def check_replaceable(output: str, source: str) -> None:
    """`--output` is replaced on every run, so refuse any folder that holds more than an earlier run's scores."""
    out = os.path.abspath(output)
    local_source = None if "://" in source else os.path.abspath(source)
    for inner, what in ((local_source, "the source"), (os.getcwd(), "the working directory")):
        if inner and (inner == out or inner.startswith(out + os.sep)):
            raise ValueError(f"--output {output} contains {what}; scoring replaces the whole --output folder, "
                             "so give it a folder of its own")
    if os.path.isdir(out):
        foreign = sorted(f for f in os.listdir(out) if not f.endswith(".parquet"))
        if foreign:
            raise ValueError(f"--output {output} holds files that are not scores ({', '.join(foreign[:3])}); "
                             "scoring replaces the whole folder, so choose an empty one or an earlier scores folder")


def prepare_scoring(cfg: Config, source: str) -> tuple[tracking.ResolvedModel, ModelPackage]:
    """Set-up shared by every scoring job: check the source, look the model up, then start Ray.

    Everything that can be wrong with the input or the model fails here, before any actor starts.
    """
    check_source(source)
    tracking.setup(cfg)
    model = tracking.resolve_model(cfg.score.model, cfg)
    package = tracking.download_package(model)
    ensure_available(package.resolved_backbone, cfg.backbone.hub_timeout_s)  # with instructions if missing
    init_ray(cfg)
    return model, package


def run_scoring(cfg: Config, source: str, output: str, root: str | None = None) -> dict:
    """Score every image under `source` with the registry's model; write Parquet to `output`."""
    check_replaceable(output, source)
    model, package = prepare_scoring(cfg, source)
    with mlflow.start_run(run_name=f"score-{model.name}-v{model.version}") as run:
        tracking.log_params({"model_uri": model.uri, "model_name": model.name, "model_version": model.version,
                             "backbone": package.backbone["name"], "source": source, "output": output})
        provenance = {"model_name": model.name, "model_version": model.version, "model_uri": model.uri,
                      "backbone": package.backbone["name"], "run_id": run.info.run_id}
        started = dt.datetime.now(dt.timezone.utc)
        scored = score_dataset(read_images(source, root=root, data=cfg.data), package, provenance, cfg)
        scored.write_parquet(output, mode=ray.data.SaveMode.OVERWRITE)
        seconds = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
        table = pq.read_table(output, columns=["image_id", "status", "error", "is_anomalous"])
        status = table["status"].to_pylist()
        check_error_fraction(len(status), status.count("error"),
                             [f"{r['image_id']}: {r['error']}" for r in table.to_pylist() if r["status"] == "error"][:5],
                             cfg.data.max_error_fraction, "scoring")
        summary = {
            "rows": len(status), "errors": status.count("error"),
            "anomalies": sum(1 for a in table["is_anomalous"].to_pylist() if a),
            "images_per_s": len(status) / max(seconds, 1e-9),
        }
        mlflow.log_metrics(summary)
        summary.update(output=os.path.abspath(output), run_id=run.info.run_id, model_uri=model.uri,
                       backbone=package.backbone["name"])
    log.info("scored %(rows)d rows (%(errors)d errors, %(anomalies)d anomalous) with %(model_uri)s -> %(output)s",
             summary)
    return summary
