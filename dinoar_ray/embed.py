"""The embedding stage: rows of bytes -> decoded images -> DINOv3 patch grids, and the Parquet cache.

`decode_rows` is shared with the scoring actor, so both stages treat bad files identically.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import ray
import torch
from ray.data.extensions import ArrowTensorArray

from .backbone import Backbone, ResolvedBackbone
from .images import DecodeOptions, decode


def decode_rows(batch: dict, options: DecodeOptions) -> tuple[dict, list[int], list[np.ndarray]]:
    """Per-row decode. Returns provenance columns for every row, plus the ok rows' indices and images."""
    n = len(batch["image_id"])
    meta = {
        "image_id": np.asarray(batch["image_id"], dtype=object),
        "source_uri": np.asarray(batch["source_uri"], dtype=object),
        "content_sha256": np.empty(n, dtype=object),
        "width": np.full(n, -1, dtype=np.int32),
        "height": np.full(n, -1, dtype=np.int32),
        "status": np.full(n, "ok", dtype=object),
        "error": np.full(n, None, dtype=object),
    }
    ok, images = [], []
    source_errors = batch.get("source_error")
    for i, data in enumerate(batch["bytes"]):
        data = bytes(data)
        meta["content_sha256"][i] = hashlib.sha256(data).hexdigest()
        if source_errors is not None and source_errors[i]:  # the source could not even read the bytes
            meta["status"][i], meta["error"][i] = "error", source_errors[i]
            continue
        image, reason = decode(data, options=options)
        if image is None:
            meta["status"][i], meta["error"][i] = "error", reason
            continue
        meta["height"][i], meta["width"][i] = image.shape[:2]
        ok.append(i)
        images.append(image)
    return meta, ok, images


# Explicit types: a batch whose errors are all null must not write a null-typed column.
PROVENANCE_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("source_uri", pa.string()), ("content_sha256", pa.string()),
    ("width", pa.int32()), ("height", pa.int32()), ("status", pa.string()), ("error", pa.string()),
])


class TooManyErrors(RuntimeError):
    """More rows failed than data.max_error_fraction allows."""


def check_error_fraction(rows: int, errors: int, examples: list[str], limit: float, what: str) -> None:
    """Fail the job, with examples, only when the share of error rows exceeds the configured limit."""
    if rows and errors / rows > limit:
        shown = "\n  ".join(examples[:5])
        raise TooManyErrors(f"{what}: {errors} of {rows} rows are errors ({errors / rows:.1%}), more than "
                            f"data.max_error_fraction={limit:.1%}. Examples:\n  {shown}")


def device_for(use_gpu: bool) -> str:
    return "cuda" if use_gpu and torch.cuda.is_available() else "cpu"


class Embedder:
    """Ray Data actor: one backbone per actor, loaded once, applied to every batch."""

    def __init__(self, resolved: dict, img_size: int, resize: str, decode: dict, use_gpu: bool = False):
        self.backbone = Backbone(ResolvedBackbone(**resolved), img_size, device_for(use_gpu), resize)
        self.decode = DecodeOptions(**decode)

    def __call__(self, batch: dict) -> pa.Table:
        meta, ok, images = decode_rows(batch, self.decode)
        b = self.backbone
        grids = np.zeros((len(meta["image_id"]), b.channels, b.grid, b.grid), dtype=np.float16)
        if images:
            grids[ok] = b.embed(images).cpu().numpy().astype(np.float16)
        table = pa.Table.from_pydict({k: list(v) for k, v in meta.items()}, schema=PROVENANCE_SCHEMA)
        return table.append_column("embedding", ArrowTensorArray.from_numpy(grids))  # error rows: zeros


def embed_dataset(rows: ray.data.Dataset, resolved: ResolvedBackbone, cfg) -> ray.data.Dataset:
    use_gpu, concurrency = cfg.ray.use_gpu, cfg.ray.embed_concurrency
    return rows.map_batches(
        Embedder,
        fn_constructor_kwargs=dict(resolved=resolved.to_dict(), img_size=cfg.backbone.img_size,
                                   resize=cfg.backbone.resize, decode=cfg.data.decode_options(), use_gpu=use_gpu),
        batch_size=cfg.backbone.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=cfg.ray.actor_cpus,
        num_gpus=1 if use_gpu else 0,
    )


def write_cache(embeddings: ray.data.Dataset, path: str) -> None:
    """Embedding cache: one Parquet row per input file, float16 grids, errors kept as status rows."""
    embeddings.write_parquet(path, mode=ray.data.SaveMode.OVERWRITE)


def read_cache(path: str, ok_only: bool = True) -> ray.data.Dataset:
    ds = ray.data.read_parquet(path)
    return ds.filter(expr="status == 'ok'") if ok_only else ds
