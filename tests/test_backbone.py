import time

import numpy as np
import pytest
import torch

from dinoar_ray.backbone import (IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneUnavailable, load_model,
                                 preprocess, resolve)


def test_random_init_embeds_to_patch_grid_without_cls_and_registers():
    resolved = resolve("random-init:tiny")
    assert resolved.name == "random-init:tiny" and resolved.kind == "random"
    backbone = Backbone(resolved, img_size=64)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 70, 3), dtype=np.uint8), rng.integers(0, 255, (90, 33, 3), dtype=np.uint8)]
    grids = backbone.embed(images)
    assert grids.shape == (2, 32, 4, 4)  # tiny preset: 32 channels, 64/16 = 4
    # Same tokens as the model's own output, minus CLS and the 4 registers, in row-major order.
    tokens = backbone.encoder.vit(pixel_values=preprocess(images, 64)).last_hidden_state
    assert tokens.shape[1] == 1 + 4 + 16
    assert torch.allclose(grids[1, :, 2, 3], tokens[1, 5 + 2 * 4 + 3], atol=1e-5)


def test_random_init_is_identical_in_every_process():
    a, b = load_model(resolve("random-init:tiny")), load_model(resolve("random-init:tiny"))
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_preprocess_replicates_grey_and_normalises():
    grey = np.full((20, 30, 3), 255, dtype=np.uint8)
    x = preprocess([grey], 32)
    assert x.shape == (1, 3, 32, 32)
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert torch.allclose(x[0, :, 5, 5], torch.tensor(expected), atol=1e-5)


def test_local_hf_directory_loads_the_same_weights(tmp_path):
    model = load_model(resolve("random-init:tiny"))
    model.save_pretrained(tmp_path / "dinov3")
    resolved = resolve(str(tmp_path / "dinov3"))
    assert resolved.kind == "local"
    image = [np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)]
    assert torch.allclose(Backbone(resolved, 64).embed(image), Backbone(resolve("random-init:tiny"), 64).embed(image),
                          atol=1e-5)


def test_offline_hub_id_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(BackboneUnavailable) as err:
        resolve("facebook/dinov3-vits16-pretrain-lvd1689m")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "HF_TOKEN" in message and "backbone.name=/models" in message and "HF_HUB_OFFLINE" in message


def test_unreachable_hub_decides_in_seconds_and_demo_falls_back_marked(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # .invalid never resolves
    start = time.monotonic()
    resolved = resolve("facebook/dinov3-vits16-pretrain-lvd1689m", allow_random_fallback=True, timeout_s=2)
    assert time.monotonic() - start < 15
    assert resolved.name.startswith("random-init") and resolved.kind == "random"


def test_missing_local_directory_and_bad_preset():
    with pytest.raises(BackboneUnavailable, match="does not exist") as err:
        resolve("/no/such/dinov3")
    # The advice names the hub repository, not the missing path.
    assert "hf download facebook/dinov3-vits16-pretrain-lvd1689m" in str(err.value)
    assert "huggingface.co//" not in str(err.value)
    with pytest.raises(ValueError, match="random-init:vits16"):
        resolve("random-init:huge")
