"""Training: embed normals into the cache, fit the AR CNN with Ray Train DDP, calibrate, package, register."""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import random
import tempfile
import time

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.train
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from safetensors.torch import load_file, save_file

from . import tracking
from .ar_model import ARNet, add_feature_noise, anomaly_map, image_scores
from .backbone import ResolvedBackbone, resolve_config
from .config import Config
from .embed import check_error_fraction, embed_dataset, read_cache, write_cache
from .package import ModelPackage
from .runtime import init_ray
from .sources import check_source, read_images, resolve_data_dirs

log = logging.getLogger(__name__)
CKPT_WEIGHTS, CKPT_OPTIMIZER, CKPT_STATE = "ar_model.safetensors", "optimizer.pt", "state.json"


def is_holdout(image_id: str, fraction: float) -> bool:
    """Deterministic split by a hash of the id: the same images are held out on every run."""
    bucket = int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < fraction


def split_holdout(batch: pa.Table, fraction: float, holdout: bool) -> pa.Table:
    """The embeddings of one side of the holdout split; a batch filter, so tensors are never unpacked per row."""
    keep = [is_holdout(i, fraction) == holdout for i in batch["image_id"].to_pylist()]
    return batch.filter(pa.array(keep, pa.bool_())).select(["embedding"])


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker: DDP fit of the AR CNN on this worker's shard of the cache."""
    tc = config["train"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(tc["seed"] + rank)
    rng = random.Random(tc["seed"] + rank)

    model = ARNet(config["channels"], **config["ar"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc["lr"], weight_decay=tc["weight_decay"])
    start_epoch = 0
    history: list[dict] = []  # every finished epoch's loss; travels in each checkpoint
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # resuming a run of the same name: continue after the last finished epoch
        with checkpoint.as_directory() as d:
            model.load_state_dict(load_file(os.path.join(d, CKPT_WEIGHTS)))
            optimizer.load_state_dict(torch.load(os.path.join(d, CKPT_OPTIMIZER), weights_only=True))
            with open(os.path.join(d, CKPT_STATE)) as f:
                history = json.load(f)["history"]
            start_epoch = history[-1]["epoch"] + 1
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")
    per_worker_batch = max(1, tc["batch_size"] // world)

    for epoch in range(start_epoch, tc["epochs"]):
        loss_sum, n = torch.zeros((), device=device), torch.zeros((), device=device)
        for batch in shard.iter_torch_batches(batch_size=per_worker_batch, dtypes=torch.float32, device=device,
                                              local_shuffle_buffer_size=4 * per_worker_batch):
            x = batch["embedding"]  # [B, C, h, w]
            x_in = add_feature_noise(x, tc["noise_scale"]) if rng.random() < tc["noise_prob"] else x
            loss = F.mse_loss(model(x_in), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(x)
            n += len(x)
        totals = torch.stack([loss_sum, n])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        metrics = {"epoch": epoch, "loss": float(totals[0] / totals[1].clamp(min=1))}
        history.append(metrics)
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                net = model.module if hasattr(model, "module") else model
                save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                          os.path.join(d, CKPT_WEIGHTS))
                torch.save(optimizer.state_dict(), os.path.join(d, CKPT_OPTIMIZER))
                with open(os.path.join(d, CKPT_STATE), "w") as f:
                    json.dump({"history": history, "model": {"ar": config["ar"], "channels": config["channels"]}}, f)
                checkpoint = Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)


def fit(cfg: Config, train_ds: ray.data.Dataset, channels: int, run_name: str) -> tuple[dict, list[dict]]:
    """DDP fit on Ray Train. Returns the final AR state dict and per-epoch metrics.

    A run name that already has checkpoints under output_dir resumes; it must be the same network.
    """
    storage = os.path.abspath(os.path.join(cfg.output_dir, "ray_train"))
    check_resumable(os.path.join(storage, run_name), {"ar": vars(cfg.ar), "channels": channels})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": vars(cfg.train), "ar": vars(cfg.ar), "channels": channels},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=run_name, storage_path=storage,
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": train_ds},
    )
    result = trainer.fit()
    # The last checkpoint holds the whole loss history; Ray's metrics only cover the kept checkpoints.
    with result.checkpoint.as_directory() as d:
        state = load_file(os.path.join(d, CKPT_WEIGHTS))
        with open(os.path.join(d, CKPT_STATE)) as f:
            history = json.load(f)["history"]
    return state, history


def check_resumable(run_dir: str, model: dict) -> None:
    """Refuse, before any worker starts, to resume a run whose checkpoints hold another network."""
    states = sorted(glob.glob(os.path.join(run_dir, "checkpoint_*", CKPT_STATE)))
    if not states:
        return
    with open(states[-1]) as f:
        saved = json.load(f).get("model")
    if saved is not None and saved != json.loads(json.dumps(model)):
        raise ValueError(f"train.run_name={os.path.basename(run_dir)} resumes a run trained with {saved}, but this "
                         f"config asks for {model}; use a new train.run_name (or the run's own ar.* settings)")


@torch.no_grad()
def holdout_scores(model: ARNet, holdout: ray.data.Dataset, score: dict) -> np.ndarray:
    scores = [image_scores(anomaly_map(model, b["embedding"]), score["aggregation"], score["topk_percent"],
                           score["smooth_sigma"])
              for b in holdout.iter_torch_batches(batch_size=64, dtypes=torch.float32)]
    return torch.cat(scores).numpy() if scores else np.zeros(0, dtype=np.float32)


def calibrate(scores: np.ndarray, target_fpr: float) -> tuple[float | None, dict]:
    """Threshold on normal-only scores: at most target_fpr of them lie strictly above it."""
    if len(scores) == 0:
        return None, {"target_fpr": target_fpr, "n_holdout": 0}
    threshold = float(np.quantile(scores, 1.0 - target_fpr, method="higher"))
    quantiles = {f"q{q:02d}": float(np.quantile(scores, q / 100)) for q in (1, 5, 25, 50, 75, 95, 99)}
    return threshold, {"target_fpr": target_fpr, "n_holdout": int(len(scores)),
                       "holdout_fpr": float(np.mean(scores > threshold)),
                       "mean": float(scores.mean()), "std": float(scores.std()), **quantiles,
                       "scores": [float(s) for s in scores]}


def embed_to_cache(cfg: Config, resolved: ResolvedBackbone, source: str, cache: str, root: str | None) -> dict:
    """Embed every image under `source` into the Parquet cache; return row/error counts and examples."""
    rows = read_images(source, root=root, data=cfg.data)
    write_cache(embed_dataset(rows, resolved, cfg), cache)
    table = pq.read_table(cache, columns=["image_id", "status", "error"])
    errors = table.filter(pc.equal(table["status"], "error"))
    examples = [f"{r['image_id']}: {r['error']}" for r in errors.slice(0, 5).to_pylist()]
    check_error_fraction(table.num_rows, errors.num_rows, examples, cfg.data.max_error_fraction, "embedding")
    return {"rows": table.num_rows, "errors": errors.num_rows, "error_examples": examples}


def run_training(cfg: Config) -> dict:
    """embed -> fit -> calibrate -> package -> log + register in MLflow. Returns a summary."""
    tracking.setup(cfg)
    train_dir, _ = resolve_data_dirs(cfg.data.root, cfg.data.train, cfg.data.test)
    if not train_dir:
        raise ValueError("data.root (MVTec layout) or data.train (a folder of normal images) must be set")
    check_source(train_dir)
    resolved = resolve_config(cfg.backbone)
    out = os.path.abspath(cfg.output_dir)
    cache = os.path.join(out, "embeddings", "train")
    init_ray(cfg)  # only once the inputs are known to be usable

    with mlflow.start_run(run_name=f"train-{cfg.tracking.model_name}") as run:
        # backbone.name records what ran (a demo may have fallen back); backbone.requested what was asked.
        tracking.log_params({**cfg.flat(), "backbone.requested": cfg.backbone.name, "backbone.name": resolved.name,
                             "backbone": resolved.name, "backbone.kind": resolved.kind})
        t0 = time.perf_counter()
        counts = embed_to_cache(cfg, resolved, train_dir, cache, cfg.data.root or None)
        embed_s = time.perf_counter() - t0
        for example in counts["error_examples"]:
            log.warning("skipped undecodable training image %s", example)
        cached = read_cache(cache)
        first = cached.take(1)
        if not first:
            raise ValueError(f"no decodable training images under {train_dir}")
        channels, grid = first[0]["embedding"].shape[0], first[0]["embedding"].shape[1]
        frac = cfg.train.holdout_fraction
        train_ds = cached.map_batches(split_holdout, fn_kwargs={"fraction": frac, "holdout": False},
                                      batch_format="pyarrow")
        holdout = cached.map_batches(split_holdout, fn_kwargs={"fraction": frac, "holdout": True},
                                     batch_format="pyarrow")

        t0 = time.perf_counter()
        state, history = fit(cfg, train_ds, channels, run_name=cfg.train.run_name or f"dinoar-{run.info.run_id}")
        fit_s = time.perf_counter() - t0
        for record in history:
            mlflow.log_metric("train_loss", record["loss"], step=int(record["epoch"]))

        package = ModelPackage(
            backbone={**resolved.to_dict(), "img_size": cfg.backbone.img_size, "resize": cfg.backbone.resize,
                      "channels": channels, "grid": grid},
            ar=vars(cfg.ar).copy(), score={"aggregation": cfg.score.aggregation, "topk_percent": cfg.score.topk_percent,
                                           "smooth_sigma": cfg.score.smooth_sigma},
            state_dict=state)
        scores = holdout_scores(package.build_model(), holdout, package.score)
        package.threshold, package.calibration = calibrate(scores, cfg.train.target_fpr)
        package.training = {"epochs": cfg.train.epochs, "final_loss": history[-1]["loss"] if history else None,
                            "images": counts["rows"], "errors": counts["errors"], "holdout": int(len(scores))}
        package_dir = package.save(os.path.join(out, "package"))
        n_params = sum(v.numel() for v in state.values())
        mlflow.log_metrics({"embed_seconds": embed_s, "fit_seconds": fit_s, "train_images": counts["rows"],
                            "train_errors": counts["errors"], "holdout_images": len(scores),
                            "ar_parameters": n_params, "ar_megabytes": 4 * n_params / 1e6})
        if package.threshold is not None:
            mlflow.log_metric("threshold", package.threshold)
        model = tracking.log_and_register(package_dir, cfg.tracking.model_name, cfg.tracking.alias)

    summary = {"run_id": run.info.run_id, "model_uri": model.uri, "model_version": model.version,
               "backbone": resolved.name, "package": package_dir, "threshold": package.threshold,
               "final_loss": package.training["final_loss"], **counts}
    log.info("trained %s (backbone %s), registered as %s@%s", model.uri, resolved.name, model.name, cfg.tracking.alias)
    return summary
