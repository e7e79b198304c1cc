"""Ray Train fit: the loss of every epoch is kept, and a rerun of the same run name resumes."""
import numpy as np
import pytest
import ray
from conftest import tiny_config

from dinoar_ray.train import fit


def test_fit_keeps_every_epoch_and_a_rerun_resumes_after_the_last(ray_session, tmp_path):
    cfg = tiny_config(tmp_path, **{"train.epochs": 3})
    rng = np.random.default_rng(0)
    ds = ray.data.from_items([{"embedding": rng.standard_normal((32, 4, 4)).astype(np.float32)} for _ in range(16)])
    _, history = fit(cfg, ds, 32, run_name="resume-me")
    assert [h["epoch"] for h in history] == [0, 1, 2]  # all three, though only two checkpoints are kept
    cfg.train.epochs = 4
    state, resumed = fit(cfg, ds, 32, run_name="resume-me")
    assert [h["epoch"] for h in resumed] == [0, 1, 2, 3]
    assert resumed[:3] == history  # epochs 0-2 came from the checkpoint, they were not run again
    assert set(state) and all(np.isfinite(v.float().numpy()).all() for v in state.values())
    cfg.ar.hidden = 8  # another network under the same run name: refused before any worker starts
    with pytest.raises(ValueError, match="use a new train.run_name"):
        fit(cfg, ds, 32, run_name="resume-me")
