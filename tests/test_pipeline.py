"""End to end on a real local Ray cluster and a real SQLite MLflow store: train -> register -> score -> evaluate."""
import os

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image
from conftest import tiny_config
from mlflow import MlflowClient

from dinoar_ray import tracking
from dinoar_ray.demo import make_sample_dataset
from dinoar_ray.evaluate import run_evaluation
from dinoar_ray.score import run_scoring, score_schema
from dinoar_ray.sources import IMAGE_EXTENSIONS
from dinoar_ray.train import run_training


def count_images(folder: str) -> int:
    return sum(1 for _, _, files in os.walk(folder) for f in files
               if f.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS)


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    root = make_sample_dataset(str(tmp / "data"), n_train=16, n_good=4, n_defect=4)
    good = open(os.path.join(root, "train", "good", "000.png"), "rb").read()
    open(os.path.join(root, "train", "good", "broken.png"), "wb").write(good[: len(good) // 3])
    open(os.path.join(root, "test", "good", "zero.png"), "wb").close()
    open(os.path.join(root, "test", "foreign", "notes.JPG"), "w").write("not an image at all")
    cfg = tiny_config(tmp, **{"data.root": root})
    summary = run_training(cfg)
    return cfg, root, summary, tmp


def test_training_logs_registers_and_checkpoints(trained):
    cfg, root, summary, _ = trained
    assert summary["rows"] == 17 and summary["errors"] == 1  # 16 good + 1 truncated file
    assert summary["error_examples"][0].startswith("train/good/broken.png: corrupt image")
    client = MlflowClient()
    run = client.get_run(summary["run_id"])
    assert run.data.params["backbone"] == "random-init:tiny"
    assert run.data.params["ar.mode"] == "causal"
    losses = client.get_metric_history(summary["run_id"], "train_loss")
    assert [m.step for m in losses] == [0, 1] and all(np.isfinite(m.value) for m in losses)
    assert str(client.get_model_version_by_alias("dinoar", "champion").version) == summary["model_version"]
    # One checkpoint per epoch (AR weights as safetensors), the last two kept.
    train_dir = os.path.join(cfg.output_dir, "ray_train", f"dinoar-{summary['run_id']}")
    checkpoints = sorted(d for d in os.listdir(train_dir) if d.startswith("checkpoint") and os.path.isdir(os.path.join(train_dir, d)))
    assert len(checkpoints) == 2
    assert os.path.exists(os.path.join(train_dir, checkpoints[-1], "ar_model.safetensors"))


def test_package_holds_weights_threshold_and_backbone_reference(trained):
    _, _, summary, _ = trained
    package = tracking.download_package(tracking.resolve_model("", trained[0]))
    assert package.backbone["name"] == "random-init:tiny" and package.backbone["img_size"] == 64
    assert package.backbone["grid"] == 4 and package.backbone["channels"] == 32
    assert package.threshold == pytest.approx(summary["threshold"])
    holdout = np.array(package.calibration["scores"])
    assert len(holdout) == package.calibration["n_holdout"] > 0
    assert np.mean(holdout > package.threshold) <= package.calibration["target_fpr"] + 1e-9


def test_scoring_writes_one_row_per_file_with_provenance(trained):
    cfg, root, train_summary, tmp = trained
    out = str(tmp / "scores")
    summary = run_scoring(cfg, os.path.join(root, "test"), out, root=root)
    table = pq.read_table(out)  # plain pyarrow, no Ray
    assert len(pd.read_parquet(out)) == table.num_rows  # and plain pandas
    assert table.schema.equals(score_schema(), check_metadata=False)
    assert table.num_rows == count_images(os.path.join(root, "test")) == 4 + 4 + 2 == summary["rows"]
    rows = {r["image_id"]: r for r in table.to_pylist()}
    assert rows["test/good/zero.png"]["status"] == "error"
    assert rows["test/good/zero.png"]["error"] == "empty file (0 bytes)"
    assert rows["test/foreign/notes.JPG"]["error"] == "not an image (format not recognised)"
    for r in rows.values():
        assert r["model_name"] == "dinoar" and r["model_version"] == train_summary["model_version"]
        assert r["model_uri"] == f"models:/dinoar/{train_summary['model_version']}"
        assert r["run_id"] == summary["run_id"] and r["backbone"] == "random-init:tiny"
        assert r["source_uri"].startswith("file://") and len(r["content_sha256"]) == 64
        if r["status"] == "ok":
            assert r["error"] is None and r["heatmap_shape"] == [4, 4] and len(r["heatmap"]) == 16
            assert r["score"] == pytest.approx(max(r["heatmap"]), rel=1e-6)  # top-5% mean of 16 patches: k = 1, the max
            assert r["is_anomalous"] == (r["score"] > train_summary["threshold"])
            assert (r["width"], r["height"]) == Image.open(os.path.join(root, r["image_id"])).size
        else:
            assert r["score"] is None and r["heatmap"] is None and r["width"] is None
    scoring_run = MlflowClient().get_run(summary["run_id"])
    assert scoring_run.data.params["model_version"] == train_summary["model_version"]

    # The registered pyfunc gives the same scores as the batch job.
    model = mlflow.pyfunc.load_model("models:/dinoar@champion")
    ids = ["test/good/000.png", "test/foreign/001.png"]
    predicted = model.predict(pd.DataFrame({"bytes": [open(os.path.join(root, i), "rb").read() for i in ids]}))
    assert np.allclose(predicted["score"], [rows[i]["score"] for i in ids], rtol=1e-4)

    # Evaluation: image and pixel metrics, logged into the scoring run.
    result = run_evaluation(cfg, out, root, run_id=summary["run_id"])
    assert (result["images"], result["errors"], result["normal_images"], result["anomalous_images"]) == (10, 2, 4, 4)
    for key in ("image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_aupr", "pixel_f1_max", "aupro"):
        assert 0.0 <= result[key] <= 1.0, key
    # The threshold's error rates, from is_anomalous on the labelled rows.
    ok_rows = [r for r in rows.values() if r["status"] == "ok"]
    normals = [r["is_anomalous"] for r in ok_rows if r["image_id"].startswith("test/good/")]
    assert result["threshold_fpr"] == pytest.approx(sum(normals) / len(normals))
    assert MlflowClient().get_run(summary["run_id"]).data.metrics["pixel_auroc"] == pytest.approx(result["pixel_auroc"])


def test_new_version_moves_the_alias_and_scoring_follows(trained):
    cfg, root, first, tmp = trained
    cfg.train.epochs = 1
    second = run_training(cfg)
    assert int(second["model_version"]) == int(first["model_version"]) + 1
    out = str(tmp / "scores_v2")
    run_scoring(cfg, os.path.join(root, "test", "good"), out, root=root)
    assert set(pq.read_table(out, columns=["model_version"])["model_version"].to_pylist()) == {second["model_version"]}
    cfg.score.model = first["model_version"]  # an explicit version still works
    out = str(tmp / "scores_v1")
    run_scoring(cfg, os.path.join(root, "test", "good"), out, root=root)
    assert set(pq.read_table(out, columns=["model_version"])["model_version"].to_pylist()) == {first["model_version"]}


def test_missing_model_says_how_to_get_one(trained):
    cfg = trained[0]
    tracking.setup(cfg)
    with pytest.raises(LookupError, match="Train and register one first"):
        tracking.resolve_model("models:/nosuch@champion", cfg)
    with pytest.raises(LookupError, match=r"say which version, models:/dinoar@<alias> or models:/dinoar/<version>"):
        tracking.resolve_model("models:/dinoar", cfg)
