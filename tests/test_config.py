import pytest

from dinoar_ray.config import ConfigError, load_config


def test_defaults_match_the_paper():
    cfg = load_config()
    assert (cfg.ar.mode, cfg.ar.num_layers, cfg.ar.hidden, cfg.ar.kernel_size) == ("causal", 5, 256, 3)
    assert cfg.ar.dilations == [4, 4, 4, 4, 4]
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs, cfg.train.noise_prob) == (1e-3, 64, 40, 0.2)
    assert cfg.backbone.img_size == 448


def test_yaml_include_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 7\nar:\n  hidden: 64\n")
    (tmp_path / "top.yaml").write_text("include: base.yaml\ntrain:\n  lr: 0.01\n")
    cfg = load_config(str(tmp_path / "top.yaml"), ["ar.dilations=[1,2,3,4,5]", "ray.use_gpu=true", "train.epochs=3"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.ar.hidden) == (3, 0.01, 64)
    assert cfg.ar.dilations == [1, 2, 3, 4, 5] and cfg.ray.use_gpu is True


def test_shipped_configs_load():
    for name in ("train", "score", "demo"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.backbone.img_size % 16 == 0
    assert load_config("configs/demo.yaml").backbone.allow_random_fallback is True
    assert load_config("configs/train.yaml").backbone.allow_random_fallback is False


@pytest.mark.parametrize("override,message", [
    (["ar.mode=sideways"], "ar.mode: 'sideways' is not allowed; choose one of causal, bidirectional, standard"),
    (["score.aggregation=median"], "choose one of max, topk_mean"),
    (["train.epoch=3"], "unknown config key 'train.epoch'; allowed: "),
    (["nosuch.key=1"], "unknown config key 'nosuch'"),
    (["train.epochs=many"], "train.epochs: expected a finite int"),
    (["train.epochs=2.5"], "train.epochs: expected an integer, got '2.5'"),
    (["train.epochs=true"], "train.epochs: expected a finite int"),
    (["train.epochs=.inf"], "train.epochs: expected a finite int"),
    (["ar.dilations=[1,2"], "ar.dilations: '[1,2' is not valid YAML"),
    (["train.epochs=2", "train.epochs.x=3"], "train.epochs was already given a value"),
    (["output_dir.x=1"], "output_dir: is a single value, not a section"),
    (["ar.hidden=0"], "ar.hidden: 0 must be at least 1"),
    (["train.lr=-1"], "train.lr: -1.0 must be positive"),
    (["ray.embed_concurrency=0"], "ray.embed_concurrency: 0 must be at least 1"),
    (["backbone.img_size=450"], "backbone.img_size: 450 must be a positive multiple of 16"),
    (["ar.num_layers=3"], "ar.dilations: needs one positive dilation per layer (3)"),
    (["train.target_fpr=2"], "train.target_fpr: 2.0 must lie in"),
    (["ray.use_gpu=maybe"], "ray.use_gpu: expected true or false"),
    (["epochs"], "not of the form key=value"),
])
def test_bad_config_names_the_key_and_allowed_values(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    assert message in str(err.value)


def test_unknown_key_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epoch=3"])
    assert "train.epochs" in str(err.value) and "train.lr" in str(err.value)


def test_broken_yaml_and_include_loops_are_config_errors(tmp_path):
    (tmp_path / "broken.yaml").write_text("train: [epochs: 3\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(str(tmp_path / "broken.yaml"))
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(str(tmp_path / "a.yaml"))
