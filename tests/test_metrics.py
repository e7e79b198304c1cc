import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from dinoar_ray import metrics
from dinoar_ray.evaluate import upsample
from dinoar_ray.train import calibrate


def test_auroc_hand_computed():
    # Positives 0.8, 0.4; negatives 0.1, 0.5, 0.3. Pairs won: 0.8 beats all 3, 0.4 beats 0.1 and 0.3 -> 5/6.
    assert metrics.auroc([1, 1, 0, 0, 0], [0.8, 0.4, 0.1, 0.5, 0.3]) == pytest.approx(5 / 6)


def test_auroc_ties_count_half():
    assert metrics.auroc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)


def test_aupr_hand_computed():
    # Ranked: 0.9(+) 0.8(-) 0.7(+) -> precision at the two positives 1 and 2/3; AP = (1 + 2/3) / 2.
    assert metrics.aupr([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(5 / 6)


def test_metrics_match_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.3
    scores = rng.random(500) + labels * 0.3
    assert metrics.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert metrics.aupr(labels, scores) == pytest.approx(average_precision_score(labels, scores))


def test_undefined_cases_return_none_and_nan_is_an_error():
    assert metrics.auroc([0, 0, 0], [0.1, 0.2, 0.3]) is None  # all-normal test set
    assert metrics.aupr([0, 0], [0.1, 0.2]) is None
    with pytest.raises(ValueError, match="1 scores are NaN"):
        metrics.auroc([0, 1], [0.1, float("nan")])


def test_upsample_keeps_constant_maps_and_target_size():
    out = upsample(np.full((2, 3), 7.0), 40, 17)
    assert out.shape == (40, 17) and np.allclose(out, 7.0)


def test_calibration_hits_the_target_fpr_on_normals():
    rng = np.random.default_rng(0)
    holdout = rng.normal(size=2000)
    threshold, stats = calibrate(holdout, target_fpr=0.05)
    assert np.mean(holdout > threshold) <= 0.05
    assert stats["holdout_fpr"] == pytest.approx(np.mean(holdout > threshold))
    assert threshold == pytest.approx(1.645, abs=0.1)  # the normal's 95th percentile
    fresh = rng.normal(size=20000)  # unseen normals from the same distribution
    assert abs(np.mean(fresh > threshold) - 0.05) < 0.015
    assert calibrate(np.zeros(0), 0.01)[0] is None
