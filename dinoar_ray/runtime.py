"""Set-up shared by every job: Ray connection and logging."""
from __future__ import annotations

import logging
import os

import ray

from .config import Config


def init_ray(cfg: Config) -> None:
    """Connect to cfg.ray.address / RAY_ADDRESS (as under `ray job submit`), else start a local cluster."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    kwargs = {}
    if address is None:
        # Train workers hold one CPU each; leave room for the Ray Data tasks that feed them.
        kwargs["num_cpus"] = cfg.ray.num_cpus or max(os.cpu_count() or 1, cfg.train.num_workers + 2)
    # The driver's working directory is not shipped: actors import dinoar_ray from the installed package.
    ray.init(address=address, log_to_driver=True, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
