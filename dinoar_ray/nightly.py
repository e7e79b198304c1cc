"""Nightly batch scoring: registry lookup, date-partitioned atomic output, skip what is already scored,
overlays + HTML report, drift metrics.

Output layout (readers point pyarrow/pandas/duckdb/Spark at <output>; `_`-prefixed folders are
ignored by their dataset discovery):

    <output>/date=YYYY-MM-DD/*.parquet     published nights, each with a _SUCCESS manifest
    <output>/_reports/date=YYYY-MM-DD/     report.html, histogram, overlays/*.png
    <output>/_staging/<run_id>/            a run's work in progress; never read
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import Callable

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from scipy.stats import ks_2samp

from . import tracking
from .config import Config
from .heatmaps import histogram_png, overlay, write_report
from .images import DecodeOptions, decode
from .package import ModelPackage
from .embed import check_error_fraction
from .score import prepare_scoring, score_dataset, score_schema
from .sources import detect_layout, read_images, read_source_bytes

log = logging.getLogger(__name__)
SUCCESS, STAGING, REPORTS, LOCK = "_SUCCESS", "_staging", "_reports", "_nightly.lock"
LIGHT_COLUMNS = ["image_id", "status", "error", "score", "is_anomalous", "content_sha256", "model_version"]
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def partition_dir(output: str, date: str) -> str:
    return os.path.join(output, f"date={date}")


def published_partitions(output: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(output, "date=*")) if os.path.exists(os.path.join(p, SUCCESS)))


def parquet_files(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "*.parquet")))


@dataclass(frozen=True)
class Scored:
    """What this model version has already scored in published nights."""
    hashes: frozenset[str] = frozenset()  # content of ok rows: a renamed copy is recognised
    errors: frozenset[tuple[str, str]] = frozenset()  # (source_uri, hash) of error rows: many share empty bytes

    def __contains__(self, row: tuple[str, str]) -> bool:
        return row[1] in self.hashes or row in self.errors


def scored_before(output: str, model_version: str, skip_date: str | None = None) -> Scored:
    """Rows this model version has already published, in every night but `skip_date`."""
    hashes: set[str] = set()
    errors: set[tuple[str, str]] = set()
    for part in published_partitions(output):
        if skip_date and os.path.basename(part) == f"date={skip_date}":
            continue
        for f in parquet_files(part):
            t = pq.read_table(f, columns=["source_uri", "content_sha256", "model_version", "status"])
            t = t.filter(pc.equal(t["model_version"], model_version))
            for uri, sha, status in zip(*(t[c].to_pylist() for c in ("source_uri", "content_sha256", "status"))):
                if status == "ok":
                    hashes.add(sha)
                else:
                    errors.add((uri, sha))
    return Scored(frozenset(hashes), frozenset(errors))


def recover(output: str) -> None:
    """Undo a run killed mid-publish (old night moved aside, new one not yet in), then drop stale staging."""
    for previous in glob.glob(os.path.join(output, STAGING, "*", "previous", "date=*")):
        target = os.path.join(output, os.path.basename(previous))
        if not os.path.exists(target):
            log.warning("restoring %s from an interrupted publish", target)
            os.rename(previous, target)
    shutil.rmtree(os.path.join(output, STAGING), ignore_errors=True)


def hash_and_skip(batch: dict, known: Scored) -> dict:
    """Adds content_sha256 and drops rows this model version already scored."""
    hashes = np.array([hashlib.sha256(bytes(b)).hexdigest() for b in batch["bytes"]], dtype=object)
    keep = np.array([(uri, h) not in known for uri, h in zip(batch["source_uri"], hashes)], dtype=bool)
    batch["content_sha256"] = hashes
    return {k: np.asarray(v)[keep] for k, v in batch.items()}


def publish(staging: str, target: str, aside: str) -> None:
    """Two renames: readers see the old night or the new one, never a half-written one."""
    if os.path.exists(target):
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.rename(target, aside)
    os.rename(staging, target)


def _safe_name(image_id: str) -> str:
    """A file name for an image's overlay; the id's hash keeps 'a/b.png' and 'a_b.png' apart."""
    digest = hashlib.sha256(image_id.encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '_', image_id)[-160:]}-{digest}.png"


def _mask_for(layout, image_id: str, shape: tuple[int, int]) -> np.ndarray | None:
    if layout is None:
        return None
    path = None
    for candidate in (image_id, f"test/{image_id}"):  # ids relative to the root or to its test/ folder
        try:
            path = layout.mask_path(candidate)
            break
        except ValueError:
            continue
    if not path or not os.path.exists(path):
        return None
    from PIL import Image

    mask = np.asarray(Image.open(path).convert("L")) > 127
    return mask if mask.shape == shape else None


def write_overlays(files: list[str], chosen: list[str], folder: str, vmin: float, vmax: float,
                   layout, decode_options: DecodeOptions, resize: str, id_column: str = "image_id",
                   bytes_column: str = "bytes") -> dict[str, str]:
    """PNG overlays for the chosen image ids; returns image_id -> overlay path.

    Heatmaps are read only for the chosen rows, so a large night never sits in driver memory.
    """
    os.makedirs(folder, exist_ok=True)
    paths: dict[str, str] = {}
    if not chosen:
        return paths
    wanted = pa.array(chosen, pa.string())
    rows = [r for f in files for r in pq.read_table(f, columns=["image_id", "source_uri", "heatmap", "heatmap_shape"])
            .filter(pc.is_in(pc.field("image_id"), wanted)).to_pylist()]
    for r in rows:
        try:
            data = read_source_bytes(r["source_uri"], id_column, bytes_column)
        except Exception as exc:  # gone, changed, or no driver for its scheme here: no overlay, no failed night
            log.warning("no overlay for %s: %s", r["image_id"], exc)
            continue
        image, _ = decode(data, options=decode_options)
        if image is None:
            continue
        heatmap = np.asarray(r["heatmap"], dtype=np.float32).reshape(r["heatmap_shape"])
        path = os.path.join(folder, _safe_name(r["image_id"]))
        overlay(image, heatmap, vmin, vmax, _mask_for(layout, r["image_id"], image.shape[:2]), resize=resize).save(path)
        paths[r["image_id"]] = path
    return paths


def set_overlay_paths(files: list[str], paths: dict[str, str]) -> None:
    for f in files:
        t = pq.read_table(f)
        ids = t["image_id"].to_pylist()
        column = pa.array([paths.get(i) for i in ids], pa.string())
        t = t.set_column(t.schema.get_field_index("heatmap_png"), "heatmap_png", column)
        pq.write_table(t, f)


def drift(scores: np.ndarray, normals: np.ndarray, threshold: float | None) -> dict:
    """Tonight's score distribution against the training normals'."""
    out = {"score_mean": float(scores.mean()) if len(scores) else float("nan")}
    for q in (50, 95, 99):
        out[f"score_q{q}"] = float(np.quantile(scores, q / 100)) if len(scores) else float("nan")
    if threshold is not None and len(scores):
        out["share_over_threshold"] = float(np.mean(scores > threshold))
    if len(scores) and len(normals):
        ks = ks_2samp(scores, normals)
        out.update(ks_statistic=float(ks.statistic), ks_pvalue=float(ks.pvalue))
    return out


def run_nightly(cfg: Config, source: str, output: str, date: str = "", rescore: bool = False,
                masks_root: str = "", inject: Callable[[ray.data.Dataset], ray.data.Dataset] | None = None) -> dict:
    """Score tonight's new images with the registry's model and publish the night atomically.

    `inject` wraps the rows dataset before scoring (fault-injection tests use it to kill a run).
    """
    date = date or dt.datetime.now(dt.timezone.utc).date().isoformat()
    try:
        if not DATE_RE.match(date):
            raise ValueError
        dt.date.fromisoformat(date)
    except ValueError:
        raise ValueError(f"--date {date!r}: expected a calendar date, YYYY-MM-DD") from None
    output = os.path.abspath(output)
    model, package = prepare_scoring(cfg, source)
    os.makedirs(output, exist_ok=True)
    with exclusive(output):
        recover(output)
        # --rescore re-scores tonight's images; those published on other nights stay theirs (one row each).
        known = scored_before(output, model.version, skip_date=date if rescore else None)
        return _score_night(cfg, source, output, date, rescore, masks_root, inject, model, package, known)


class NightlyBusy(RuntimeError):
    """Another nightly run holds this output."""


@contextlib.contextmanager
def exclusive(output: str):
    """One nightly run per output at a time: a second one would clear the first one's staging."""
    with open(os.path.join(output, LOCK), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NightlyBusy(f"another nightly run is writing to {output}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _score_night(cfg: Config, source: str, output: str, date: str, rescore: bool, masks_root: str, inject,
                 model, package: ModelPackage, known: Scored) -> dict:
    target = partition_dir(output, date)

    with mlflow.start_run(run_name=f"nightly-{date}-{model.name}-v{model.version}") as run:
        run_id = run.info.run_id
        tracking.log_params({"date": date, "source": source, "output": output, "model_uri": model.uri,
                             "model_version": model.version, "backbone": package.backbone["name"],
                             "rescore": rescore})
        stage_root = os.path.join(output, STAGING, run_id)
        staging = os.path.join(stage_root, f"date={date}")
        started = time.perf_counter()
        rows = read_images(source, data=cfg.data).map_batches(hash_and_skip, fn_kwargs={"known": known},
                                                             batch_format="numpy")
        if inject is not None:
            rows = inject(rows)
        provenance = {"model_name": model.name, "model_version": model.version, "model_uri": model.uri,
                      "backbone": package.backbone["name"], "run_id": run_id}
        score_dataset(rows, package, provenance, cfg).write_parquet(staging)
        seconds = time.perf_counter() - started
        new_files = parquet_files(staging)
        new_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in new_files)
        if not new_files:  # nothing new tonight: still publish the (empty) night, so readers know it ran
            os.makedirs(staging, exist_ok=True)
            pq.write_table(score_schema(cfg.score.heatmap_dtype).empty_table(), os.path.join(staging, "empty.parquet"))

        if new_rows == 0 and os.path.exists(target):
            shutil.rmtree(stage_root, ignore_errors=True)
            summary = {"date": date, "new_rows": 0, "rows": _count_rows(target), "partition": target,
                       "run_id": run_id, "model_uri": model.uri, "images_per_s": 0.0}
            mlflow.log_metrics({"new_rows": 0, "rows": summary["rows"]})
            log.info("nightly %s: nothing new to score with %s; %s unchanged (%d rows)", date, model.uri,
                     target, summary["rows"])
            return summary

        carried = _carry_previous_rows(target, staging, new_files, rescore)
        night = pa.concat_tables([pq.read_table(f, columns=LIGHT_COLUMNS) for f in parquet_files(staging)])
        night_errors = night.filter(pc.equal(night["status"], "error"))
        check_error_fraction(night.num_rows, night_errors.num_rows,
                             [f"{r['image_id']}: {r['error']}" for r in night_errors.slice(0, 5).to_pylist()],
                             cfg.data.max_error_fraction, f"nightly {date}")  # raises before anything is published
        summary = _report_and_manifest(cfg, package, model, night, staging, output, date, run_id,
                                       new_rows, carried, seconds, masks_root)
        publish(staging, target, os.path.join(stage_root, "previous", f"date={date}"))
        reports = os.path.join(output, REPORTS, f"date={date}")
        staged_reports = os.path.join(stage_root, REPORTS)
        shutil.rmtree(reports, ignore_errors=True)
        os.makedirs(os.path.dirname(reports), exist_ok=True)
        os.rename(staged_reports, reports)
        shutil.rmtree(stage_root, ignore_errors=True)
        mlflow.log_artifacts(reports, artifact_path="report")

    log.info("nightly %(date)s: %(rows)d rows (%(new_rows)d new), %(errors)d errors, %(anomalies)d anomalous, "
             "%(images_per_s).2f images/s, model %(model_uri)s -> %(partition)s; report %(report)s; "
             "MLflow run %(run_id)s", summary)
    return summary


def _count_rows(folder: str) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(folder))


def _carry_previous_rows(target: str, staging: str, new_files: list[str], rescore: bool) -> int:
    """Copy the already-published rows of this night into staging (minus those rescored now)."""
    if not os.path.exists(target):
        return 0
    rescored = set()
    if rescore:
        for f in new_files:
            t = pq.read_table(f, columns=["content_sha256", "model_version"])
            rescored.update(zip(t["content_sha256"].to_pylist(), t["model_version"].to_pylist()))
    carried = 0
    for i, f in enumerate(parquet_files(target)):
        t = pq.read_table(f)
        if rescored:
            keys = zip(t["content_sha256"].to_pylist(), t["model_version"].to_pylist())
            t = t.filter(pa.array([k not in rescored for k in keys], pa.bool_()))
        pq.write_table(t, os.path.join(staging, f"previous-{i:05d}.parquet"))
        carried += t.num_rows
    return carried


def _report_and_manifest(cfg: Config, package: ModelPackage, model, night: pa.Table, staging: str, output: str,
                         date: str, run_id: str, new_rows: int, carried: int, seconds: float,
                         masks_root: str) -> dict:
    stage_reports = os.path.join(os.path.dirname(staging), REPORTS)
    final_reports = os.path.join(output, REPORTS, f"date={date}")
    ok = night.filter(pc.equal(night["status"], "ok"))
    scores = np.asarray(ok["score"].to_pylist(), dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    ids = ok["image_id"].to_pylist()
    threshold = package.threshold
    if threshold is not None:
        chosen = [ids[i] for i in order if scores[i] > threshold][: cfg.score.max_overlays]
    else:
        chosen = [ids[i] for i in order[: cfg.score.report_top_k]]
    normals = np.asarray(package.calibration.get("scores", []), dtype=np.float64)
    lo = float(np.min(normals)) if len(normals) else (float(scores.min()) if len(scores) else 0.0)
    hi = float(max(scores.max() if len(scores) else lo, threshold or lo))
    layout = detect_layout(masks_root) if masks_root else None
    staged = write_overlays(parquet_files(staging), chosen, os.path.join(stage_reports, "overlays"), lo, hi, layout,
                            DecodeOptions(**cfg.data.decode_options()), package.backbone.get("resize", "squash"),
                            cfg.data.id_column, cfg.data.bytes_column)
    # Rows point at where the overlays will live once published.
    final_paths = {i: os.path.join(final_reports, "overlays", os.path.basename(p)) for i, p in staged.items()}
    set_overlay_paths(parquet_files(staging), final_paths)

    errors = night.filter(pc.equal(night["status"], "error")).select(["image_id", "error"]).to_pylist()
    anomalies = int(pc.sum(pc.fill_null(night["is_anomalous"], False)).as_py() or 0) if night.num_rows else 0
    stats = drift(scores, normals, threshold)
    summary = {"date": date, "rows": night.num_rows, "new_rows": new_rows, "carried_rows": carried,
               "errors": len(errors), "anomalies": anomalies, "overlays": len(staged),
               "images_per_s": new_rows / max(seconds, 1e-9), "model_name": model.name,
               "model_version": model.version, "model_uri": model.uri, "backbone": package.backbone["name"],
               "run_id": run_id, "threshold": threshold, "partition": partition_dir(output, date),
               "report": os.path.join(final_reports, "report.html")}
    mlflow.log_metrics({k: v for k, v in {**stats, **summary}.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None})
    top = sorted((r for r in ok.select(["image_id", "score", "is_anomalous"]).to_pylist()),
                 key=lambda r: -r["score"])[: cfg.score.report_top_k]
    for r in top:
        r["heatmap_png"] = staged.get(r["image_id"])
    hist = histogram_png(scores, normals, threshold)
    with open(os.path.join(stage_reports, "histogram.png"), "wb") as f:
        f.write(hist)
    write_report(os.path.join(stage_reports, "report.html"), f"dinoar nightly {date}",
                 {**{k: summary[k] for k in ("date", "rows", "new_rows", "errors", "anomalies", "threshold",
                                             "model_uri", "backbone", "run_id")}, **stats},
                 top, errors, hist)
    manifest = {**summary, "published_at": dt.datetime.now(dt.timezone.utc).isoformat(),
                "files": [os.path.basename(f) for f in parquet_files(staging)], "drift": stats}
    with open(os.path.join(staging, SUCCESS), "w") as f:
        json.dump(manifest, f, indent=2)
    return summary
