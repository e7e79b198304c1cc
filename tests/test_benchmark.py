import json
import os

from conftest import tiny_config

from dinoar_ray.benchmark import AGGREGATIONS, COLUMNS, run_quality_benchmark
from dinoar_ray.demo import make_sample_dataset


def test_benchmark_fits_every_detector_on_the_same_embeddings_and_writes_one_table(ray_session, tmp_path):
    root = make_sample_dataset(str(tmp_path / "data"), n_train=8, n_good=4, n_defect=4)
    cfg = tiny_config(tmp_path, **{"train.epochs": 1})
    report = run_quality_benchmark(cfg, root, modes=("causal",), knn_subsample="coreset", knn_ratio=0.5)
    assert set(report["detectors"]) == {"ar-causal", "knn-coreset", "gaussian"}
    for name, row in report["detectors"].items():
        assert row["normal_images"] == 4 and row["anomalous_images"] == 4, name
        for key in ("image_auroc", "pixel_auroc", "pixel_aupr", "aupro"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
        assert row["ms_per_image"] > 0 and row["model_mb"] > 0
    # The coreset keeps half of the 8 training images' 16 patches each: 64 x 32 float32.
    assert report["detectors"]["knn-coreset"]["model_mb"] == 64 * 32 * 4 / 1e6
    table = open(os.path.join(cfg.output_dir, "benchmark.md")).read()
    assert all(c in table for c in COLUMNS) and "| ar-causal |" in table
    saved = json.load(open(os.path.join(cfg.output_dir, "benchmark.json")))
    assert saved["backbone"] == "random-init:tiny"
    # The sweep's entry for the configured aggregation (the default, top-5% mean) is the main table's.
    for name, row in report["detectors"].items():
        assert set(saved["image_auroc_by_aggregation"][name]) == {a[0] for a in AGGREGATIONS}
        assert abs(saved["image_auroc_by_aggregation"][name]["top5%"] - row["image_auroc"]) < 1e-9
    assert "| detector | " + " | ".join(a[0] for a in AGGREGATIONS) + " |" in table
