import yaml
from ray.autoscaler._private.util import prepare_config, validate_config


def test_cluster_yaml_passes_rays_schema_and_has_cpu_head_and_gpu_workers():
    with open("cluster.yaml") as f:
        config = yaml.safe_load(f)
    validate_config(prepare_config(config))  # Ray fills its defaults, then checks its JSON schema
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p")) and gpu["max_workers"] >= 1
    assert any("pip install" in c and "dinoar-ray" in c for c in config["setup_commands"])
