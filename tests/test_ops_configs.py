import os
import shlex

import yaml

from dinoar_ray.cli import main


def test_kuberay_nightly_rayjob_runs_the_nightly_entrypoint_with_valid_arguments(monkeypatch):
    with open("configs/kuberay_nightly.yaml") as f:
        job = yaml.safe_load(f)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert len(job["spec"]["schedule"].split()) == 5  # a cron expression
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", "jobs/score_nightly.py"] and os.path.exists(argv[1])
    # The entrypoint's arguments parse, and its config overrides validate, with the real CLI.
    calls = {}
    monkeypatch.setattr("dinoar_ray.nightly.run_nightly", lambda cfg, *a: calls.update(cfg=cfg, args=a) or {})
    assert main(["score", "--nightly", *argv[2:]]) == 0
    assert calls["cfg"].ray.use_gpu is True and calls["args"][:2] == ("/mnt/archive", "/mnt/scores")
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
