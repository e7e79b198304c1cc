import pytest
import torch

from dinoar_ray.ar_model import ARNet, add_feature_noise, anomaly_map, image_scores, raster_mask

C, H, W = 4, 7, 7


def influence(model: ARNet, i: int, j: int) -> torch.Tensor:
    """[H, W] bool: which input positions change the output at (i, j) (exact, via the gradient)."""
    torch.manual_seed(0)
    x = torch.rand(1, C, H, W, requires_grad=True)  # positive, like the weights: no ReLU is ever dead
    model(x)[0, :, i, j].sum().backward()
    return x.grad[0].abs().sum(0) > 0


def make(mode: str, dilations=(1, 1, 1)) -> ARNet:
    torch.manual_seed(1)
    model = ARNet(C, mode=mode, num_layers=len(dilations), hidden=8, kernel_size=3, dilations=list(dilations))
    # Positive weights and inputs keep every ReLU open, so a zero gradient means "not connected".
    for p in model.parameters():
        p.data.uniform_(0.1, 1.0)
    return model


def test_masks_are_pixelcnn_a_and_b():
    assert raster_mask(3, "A").tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert raster_mask(3, "B").tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]


@pytest.mark.parametrize("i,j", [(0, 0), (3, 3), (6, 6), (2, 5)])
def test_causal_output_ignores_centre_and_future_and_uses_the_past(i, j):
    seen = influence(make("causal"), i, j)
    for y in range(H):
        for x in range(W):
            if (y, x) >= (i, j):  # raster order: the centre and everything after it
                assert not seen[y, x], f"output ({i},{j}) depends on input ({y},{x})"
    if (i, j) != (0, 0):
        assert seen.any(), "causal output must depend on some earlier position"
    if i > 0:
        assert seen[i - 1, j], "the position straight above is in the receptive field"


def test_causal_perturbation_of_centre_and_later_changes_nothing():
    model = make("causal", (2, 2, 2))
    torch.manual_seed(3)
    x = torch.randn(1, C, H, W)
    i, j = 3, 4
    y = x.clone()
    y[..., i, j:] += 5.0
    y[..., i + 1:, :] += 5.0
    assert torch.equal(model(x)[..., i, j], model(y)[..., i, j])
    z = x.clone()
    z[..., i - 2, j] += 5.0  # earlier, at the dilated offset
    assert not torch.allclose(model(x)[..., i, j], model(z)[..., i, j])


@pytest.mark.parametrize("dilations", [(1, 1, 1), (2, 2, 2), (1, 2, 3)])
def test_bidirectional_is_blind_to_the_centre_only(dilations):
    model = make("bidirectional", dilations)
    i, j = 3, 3
    seen = influence(model, i, j)
    assert not seen[i, j], "bidirectional output must not see its own input"
    d = dilations[0]
    # Both sides of the centre, in both directions: the first layer's dilated neighbours.
    for y, x in [(i - d, j), (i + d, j), (i, j - d), (i, j + d)]:
        assert seen[y, x], f"bidirectional output ({i},{j}) should see ({y},{x})"
    # Every other position within reach of the stacked dilated kernels (3 layers of k=3).
    reach = sum(dilations)
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[max(i - reach, 0):i + reach + 1, max(j - reach, 0):j + reach + 1] = True
    expected[i, j] = False
    if dilations == (1, 1, 1):
        assert torch.equal(seen, expected)
    assert not (seen & ~expected).any()


def test_bidirectional_centre_blind_everywhere_on_the_grid():
    model = make("bidirectional", (1, 1, 1))
    for i in range(H):
        for j in range(W):
            assert not influence(model, i, j)[i, j]


def test_standard_sees_the_centre():
    assert influence(make("standard"), 3, 3)[3, 3]


@pytest.mark.parametrize("mode", ["causal", "bidirectional", "standard"])
@pytest.mark.parametrize("dilations", [(1,), (4, 4, 4), (1, 2, 4, 8, 16), (3, 5)])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_grid_shape_is_kept(mode, dilations, k):
    model = ARNet(6, mode=mode, num_layers=len(dilations), hidden=4, kernel_size=k, dilations=list(dilations))
    x = torch.randn(2, 6, 5, 9)
    assert model(x).shape == x.shape
    assert anomaly_map(model, x).shape == (2, 5, 9)


def test_anomaly_map_is_channel_mean_of_squared_error():
    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x)

    x = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # [1, 2, 1, 2]
    assert anomaly_map(Zero(), x).tolist() == [[[5.0, 2.0]]]  # (1+9)/2, (4+0)/2


def test_image_scores_max_and_topk_mean():
    maps = torch.arange(10.0).view(1, 2, 5)
    assert image_scores(maps, "max").item() == 9.0
    assert image_scores(maps, "topk_mean", 20.0).item() == 8.5  # top 2 of 10: (9+8)/2
    assert image_scores(maps, "topk_mean", 0.01).item() == 9.0  # at least one patch
    with pytest.raises(ValueError, match="max, topk_mean"):
        image_scores(maps, "median")


def test_gaussian_smoothing_keeps_mass_and_constant_maps():
    from dinoar_ray.ar_model import gaussian_smooth

    spike = torch.zeros(1, 9, 9)
    spike[0, 4, 4] = 1.0
    smooth = gaussian_smooth(spike, 1.0)
    assert smooth.sum().item() == pytest.approx(1.0, abs=1e-5) and smooth[0, 4, 4] < 0.2
    assert smooth[0, 4, 3] == pytest.approx(smooth[0, 3, 4].item()) and smooth[0, 4, 3] < smooth[0, 4, 4]
    assert torch.allclose(gaussian_smooth(torch.full((2, 5, 7), 3.0), 2.0), torch.full((2, 5, 7), 3.0))
    # Smoothing lowers an isolated spike's max-score below a broad blob of the same height.
    blob = torch.zeros(1, 9, 9)
    blob[0, 3:6, 3:6] = 1.0
    assert image_scores(spike, "max", smooth_sigma=1.0) < image_scores(blob, "max", smooth_sigma=1.0)


def test_feature_noise_scale_follows_per_channel_std():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 64) * torch.tensor([1.0, 10.0, 100.0]).view(1, 3, 1, 1)
    noise = add_feature_noise(x, 0.03) - x
    ratio = noise.std(dim=(0, 2, 3)) / x.std(dim=(0, 2, 3))
    assert torch.allclose(ratio, torch.full((3,), 0.03), rtol=0.05)


def test_bad_mode_names_allowed_values():
    with pytest.raises(ValueError, match="causal, bidirectional, standard"):
        ARNet(4, mode="sideways")
