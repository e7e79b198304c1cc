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


def test_f1_max_hand_computed():
    # Scores 0.9(+) 0.8(-) 0.7(+) 0.1(-): best at threshold 0.7: P = 2/3, R = 1, F1 = 0.8.
    f1, threshold = metrics.f1_max([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert f1 == pytest.approx(0.8) and threshold == pytest.approx(0.7)
    assert metrics.f1_max([0, 0], [0.1, 0.2]) == (None, None)


def test_aupro_hand_computed():
    # One region of 2 pixels; normal pixels score 0.5 and 0.1. The curve jumps to PRO 0.5 at FPR 0
    # (the 0.9 pixel) and stays there until FPR 0.5, so up to FPR 0.3 the normalised area is 0.5.
    mask = np.array([[1, 1, 0, 0]])
    amap = np.array([[0.9, 0.2, 0.5, 0.1]])
    assert metrics.aupro([mask], [amap]) == pytest.approx(0.5)
    assert metrics.aupro([mask], [amap], fpr_limit=1.0) == pytest.approx(0.75)  # 0.5*0.5 + 1*0.5


def test_aupro_weights_regions_equally_and_ignores_empty_masks():
    # Region A: 1 pixel above every normal pixel; region B: 3 pixels below them all. PRO is
    # (1 + 0) / 2 = 0.5 from FPR 0 until every normal pixel is a false positive.
    mask = np.array([[1, 0, 1, 1, 1, 0, 0, 0]])
    amap = np.array([[0.9, 0.05, 0.0, 0.0, 0.0, 0.05, 0.05, 0.05]])
    empty = np.zeros((2, 2), bool)
    assert metrics.aupro([mask, empty], [amap, np.zeros((2, 2))]) == pytest.approx(0.5)
    assert metrics.aupro([empty], [np.zeros((2, 2))]) is None  # no regions at all
    with pytest.raises(ValueError, match="NaN"):
        metrics.aupro([mask], [np.full((1, 8), np.nan)])


def test_aupro_matches_a_brute_force_threshold_sweep():
    from scipy.ndimage import label

    rng = np.random.default_rng(1)
    masks = [rng.random((12, 12)) > 0.85 for _ in range(3)]
    maps = [rng.random((12, 12)) + m * 0.4 for m in masks]
    points = []
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        overlaps, fp, n = [], 0, 0
        for mask, amap in zip(masks, maps):
            regions, count = label(mask)
            for k in range(1, count + 1):
                overlaps.append(np.mean(amap[regions == k] >= t))
            fp += np.sum((amap >= t) & ~mask)
            n += np.sum(~mask)
        points.append((fp / n, np.mean(overlaps)))
    fpr, pro = np.array([(0.0, 0.0)] + points).T
    grid = np.linspace(0, 0.3, 30001)
    expected = np.trapezoid(np.interp(grid, fpr, pro), grid) / 0.3
    assert metrics.aupro(masks, maps) == pytest.approx(expected, abs=2e-3)
