import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from dinoar_ray.baselines import GaussianPositions, KNNBank, greedy_coreset


def test_knn_map_is_cosine_distance_to_the_nearest_training_patch():
    train = torch.zeros(1, 2, 1, 2)
    train[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    train[0, :, 0, 1] = torch.tensor([0.0, 1.0])
    query = torch.zeros(1, 2, 1, 2)
    query[0, :, 0, 0] = torch.tensor([3.0, 0.0])  # same direction as a bank patch: distance 0
    query[0, :, 0, 1] = torch.tensor([1.0, 1.0])  # 45 degrees from both: 1 - cos 45
    for chunk in (1, 2, 100):  # chunking must not change the answer
        maps = KNNBank.fit(train, chunk=chunk).maps(query)
        assert maps[0, 0, 0].item() == pytest.approx(0.0, abs=1e-6)
        assert maps[0, 0, 1].item() == pytest.approx(1 - 2 ** -0.5, abs=1e-6)


def test_knn_subsampling_sizes_and_coreset_covers_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(50, 3) for c in centres])
    idx = greedy_coreset(points, 3)
    assert sorted(int(i) // 50 for i in idx) == [0, 1, 2]  # one point from each cluster
    emb = torch.randn(4, 8, 3, 3)  # 36 patches
    assert KNNBank.fit(emb, "random", 0.25).bank.shape == (9, 8)
    assert KNNBank.fit(emb, "coreset", 0.25).bank.shape == (9, 8)
    assert KNNBank.fit(emb).nbytes == 36 * 8 * 4
    with pytest.raises(ValueError, match="none, random, coreset"):
        KNNBank.fit(emb, "all")


def test_gaussian_positions_is_mahalanobis_with_ledoit_wolf():
    rng = np.random.default_rng(0)
    emb = torch.from_numpy(rng.normal(size=(40, 3, 2, 2)))
    model = GaussianPositions.fit(emb)
    query = torch.from_numpy(rng.normal(size=(1, 3, 2, 2)))
    lw = LedoitWolf().fit(emb[:, :, 1, 0].numpy())  # position (1, 0)
    d = query[0, :, 1, 0].numpy() - lw.location_
    expected = float(np.sqrt(d @ lw.get_precision() @ d))
    assert model.maps(query)[0, 1, 0].item() == pytest.approx(expected, rel=1e-4)
    assert model.maps(model.mean.T.reshape(1, 3, 2, 2)).abs().max().item() < 1e-3  # the mean scores 0
