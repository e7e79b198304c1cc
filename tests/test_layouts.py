"""Dataset layouts and evaluation against real files: metrics agree with an independent computation."""
import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from dinoar_ray.evaluate import evaluate_scores
from dinoar_ray.score import score_schema
from dinoar_ray.sources import BMADLayout, MVTecLayout, NormalsLayout, detect_layout, resolve_data_dirs


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def bmad(tmp_path):
    img = np.zeros((8, 8), np.uint8)
    save(tmp_path / "train/good/img/n0.png", img)
    save(tmp_path / "test/good/img/g0.png", img)
    save(tmp_path / "test/Ungood/img/a0.png", img)
    mask = np.zeros((8, 8), np.uint8)
    mask[:4, :4] = 255  # the top-left quarter is the defect
    save(tmp_path / "test/Ungood/label/a0.png", mask)
    return tmp_path


def scores_parquet(path, rows):
    schema = score_schema()
    now = dt.datetime.now(dt.timezone.utc)
    full = [{**{n: None for n in schema.names}, "status": "ok", "scored_at": now, "width": 8, "height": 8,
             "heatmap_shape": [2, 2], **r} for r in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=schema), path)
    return str(path)


def test_detection_and_paths(tmp_path):
    root = bmad(tmp_path / "b")
    layout = detect_layout(str(root))
    assert isinstance(layout, BMADLayout)
    assert layout.mask_path("test/Ungood/img/a0.png").endswith("test/Ungood/label/a0.png")
    assert layout.mask_path("test/good/img/g0.png") is None and layout.is_anomalous("test/Ungood/img/a0.png")
    assert resolve_data_dirs(str(root)) == (str(root / "train/good/img"), str(root / "test"))
    (tmp_path / "m/train/good").mkdir(parents=True)
    (tmp_path / "m/test").mkdir()
    assert isinstance(detect_layout(str(tmp_path / "m")), MVTecLayout)
    (tmp_path / "plain").mkdir()
    assert isinstance(detect_layout(str(tmp_path / "plain")), NormalsLayout)
    with pytest.raises(ValueError, match="neither MVTec"):
        resolve_data_dirs(str(tmp_path / "plain"))


def test_ids_relative_to_the_test_folder_are_accepted(tmp_path):
    mvtec = MVTecLayout(str(tmp_path))
    assert mvtec.mask_path("crack/x.png") == mvtec.mask_path("test/crack/x.png")
    assert mvtec.is_anomalous("crack/x.png") and not mvtec.is_anomalous("good/x.png")
    with pytest.raises(ValueError, match="not a test image"):
        mvtec.is_anomalous("train/good/deep/x.png")
    bmad = BMADLayout(str(tmp_path))
    assert bmad.mask_path("Ungood/img/a.png") == bmad.mask_path("test/Ungood/img/a.png")


def test_bmad_evaluation_matches_sklearn_on_the_upsampled_maps(tmp_path):
    root = bmad(tmp_path / "b")
    # 2x2 maps upsample to 8x8; the anomaly image's hot cell is the defect's quarter.
    path = scores_parquet(tmp_path / "s.parquet", [
        {"image_id": "test/good/img/g0.png", "score": 0.2, "is_anomalous": False, "heatmap": [0.1, 0.2, 0.1, 0.1]},
        {"image_id": "test/Ungood/img/a0.png", "score": 0.9, "is_anomalous": True, "heatmap": [0.9, 0.1, 0.1, 0.1]},
    ])
    result = evaluate_scores(path, str(root), log_to_mlflow=False)
    assert result["image_auroc"] == 1.0 and result["threshold_fpr"] == 0.0 and result["threshold_tpr"] == 1.0
    import torch
    import torch.nn.functional as F

    def up(m):
        return F.interpolate(torch.tensor(m, dtype=torch.float32).view(1, 1, 2, 2), size=(8, 8), mode="bilinear",
                             align_corners=False).numpy().ravel()

    scores = np.concatenate([up([0.1, 0.2, 0.1, 0.1]), up([0.9, 0.1, 0.1, 0.1])])
    truth = np.zeros((2, 8, 8), bool)
    truth[1, :4, :4] = True
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(truth.ravel(), scores))
    assert result["pixel_aupr"] == pytest.approx(average_precision_score(truth.ravel(), scores))
    assert 0.0 < result["aupro"] <= 1.0


def test_missing_or_mismatched_masks_are_clear_errors(tmp_path):
    root = bmad(tmp_path / "b")
    path = scores_parquet(tmp_path / "s.parquet", [
        {"image_id": "test/Ungood/img/a0.png", "score": 0.9, "heatmap": [0.9, 0.1, 0.1, 0.1]}])
    (root / "test/Ungood/label/a0.png").unlink()
    with pytest.raises(FileNotFoundError, match="ground-truth mask missing: .*label/a0.png"):
        evaluate_scores(path, str(root), log_to_mlflow=False)
    save(root / "test/Ungood/label/a0.png", np.zeros((5, 8), np.uint8))
    with pytest.raises(ValueError, match="is 8x5 but its image is 8x8"):
        evaluate_scores(path, str(root), log_to_mlflow=False)


def test_all_normal_test_set_reports_only_the_false_positive_rate(tmp_path):
    (tmp_path / "plain").mkdir()
    save(tmp_path / "plain/x.png", np.zeros((8, 8), np.uint8))
    path = scores_parquet(tmp_path / "s.parquet", [
        {"image_id": "x.png", "score": 0.5, "is_anomalous": True, "heatmap": [0.1, 0.2, 0.1, 0.1]}])
    result = evaluate_scores(path, str(tmp_path / "plain"), log_to_mlflow=False)
    assert result["image_auroc"] is None and result["aupro"] is None and result["threshold_fpr"] == 1.0
