"""Nightly scoring on a local Ray cluster with a real SQLite registry: idempotent reruns, killed runs,
alias moves, reports and overlays."""
import html.parser
import json
import os
import shutil

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import tiny_config, tiny_package
from mlflow import MlflowClient
from PIL import Image

from dinoar_ray import tracking
from dinoar_ray.demo import make_sample_dataset
from dinoar_ray.embed import TooManyErrors
from dinoar_ray.nightly import SUCCESS, NightlyBusy, exclusive, partition_dir, run_nightly
from dinoar_ray.package import ModelPackage
from dinoar_ray.score import ImageScorer

DATE1, DATE2, DATE3 = "2026-12-01", "2026-12-02", "2026-12-03"


def make_package(seed: int, normals: list[bytes]) -> ModelPackage:
    package = tiny_package(seed)
    scores = ImageScorer(package).score_bytes(normals)["score"]
    # A low threshold on purpose, so that some test images are flagged and get overlays.
    package.threshold = float(np.quantile(scores, 0.25))
    package.calibration = {"target_fpr": 0.75, "scores": [float(s) for s in scores]}
    return package


class TagBalance(html.parser.HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


@pytest.fixture(scope="module")
def setup(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nightly")
    root = make_sample_dataset(str(tmp / "data"), n_train=6, n_good=6, n_defect=6)
    source = os.path.join(root, "test")
    open(os.path.join(source, "good", "zero.png"), "wb").close()  # one bad file
    cfg = tiny_config(tmp)
    tracking.setup(cfg)
    normals = [open(os.path.join(root, "train", "good", f), "rb").read()
               for f in sorted(os.listdir(os.path.join(root, "train", "good")))]
    versions = []
    for seed in (0, 1):
        package_dir = make_package(seed, normals).save(str(tmp / f"package{seed}"))
        with mlflow.start_run(run_name=f"register-{seed}"):
            versions.append(tracking.log_and_register(package_dir, "dinoar", "champion").version)
    MlflowClient().set_registered_model_alias("dinoar", "champion", versions[0])
    return cfg, root, source, str(tmp / "scores"), versions


def read_night(output: str, date: str):
    return pq.read_table(partition_dir(output, date)).to_pylist()


def test_first_night_publishes_every_file_with_report_and_overlays(setup):
    cfg, root, source, output, (v1, _) = setup
    summary = run_nightly(cfg, source, output, DATE1, masks_root=root)
    rows = read_night(output, DATE1)
    assert len(rows) == 13 == summary["rows"] == summary["new_rows"]  # 6 good + 6 defect + 1 empty file
    assert {r["model_version"] for r in rows} == {v1}
    assert all(r["run_id"] == summary["run_id"] for r in rows)
    manifest = json.load(open(os.path.join(partition_dir(output, DATE1), SUCCESS)))
    assert manifest["rows"] == 13 and manifest["model_version"] == v1 and manifest["run_id"] == summary["run_id"]
    assert manifest["errors"] == 1

    flagged = [r for r in rows if r["is_anomalous"]]
    assert flagged, "the low test threshold must flag some images"
    for r in flagged:
        assert r["heatmap_png"] and os.path.exists(r["heatmap_png"])
        with Image.open(r["heatmap_png"]) as im:
            im.verify()
        assert Image.open(r["heatmap_png"]).size == (r["width"], r["height"])
    assert all(r["heatmap_png"] is None for r in rows if not r["is_anomalous"])
    # Defect overlays carry the mask outline in pure green.
    defect = next(r for r in flagged if r["image_id"].startswith("foreign/"))
    pixels = np.asarray(Image.open(defect["heatmap_png"]))
    assert ((pixels == [0, 255, 0]).all(axis=-1)).sum() > 0

    page = open(summary["report"]).read()
    checker = TagBalance()
    checker.feed(page)
    assert not checker.errors and not checker.stack
    assert "good/zero.png" in page and "empty file (0 bytes)" in page
    for src in checker.images:
        if not src.startswith("data:"):
            assert os.path.exists(os.path.join(os.path.dirname(summary["report"]), src))
    metrics = MlflowClient().get_run(summary["run_id"]).data.metrics
    for key in ("ks_statistic", "ks_pvalue", "score_q50", "share_over_threshold", "rows", "errors", "anomalies"):
        assert key in metrics
    assert metrics["anomalies"] == len(flagged)


def test_rerun_of_the_same_night_adds_nothing_and_recognises_renamed_copies(setup):
    cfg, root, source, output, _ = setup
    shutil.copy(os.path.join(source, "good", "000.png"), os.path.join(source, "renamed_copy.png"))
    try:
        summary = run_nightly(cfg, source, output, DATE1)
        assert summary["new_rows"] == 0
        assert len(read_night(output, DATE1)) == 13
    finally:
        os.remove(os.path.join(source, "renamed_copy.png"))


def test_killed_run_publishes_nothing_and_rerun_has_one_row_per_image(setup):
    cfg, root, source, output, (v1, _) = setup
    output = output + "-killed"  # a store of its own, where every image is new

    def fail_on_one_image(batch):
        if "good/003.png" in set(batch["image_id"]):
            raise RuntimeError("injected worker failure")
        return batch

    with pytest.raises(Exception, match="injected worker failure"):
        run_nightly(cfg, source, output, DATE2,
                    inject=lambda ds: ds.map_batches(fail_on_one_image, batch_size=2, batch_format="numpy"))
    assert not os.path.exists(partition_dir(output, DATE2))
    summary = run_nightly(cfg, source, output, DATE2)
    ids = [r["image_id"] for r in read_night(output, DATE2)]
    assert len(ids) == len(set(ids)) == 13 == summary["rows"]
    # A killed rescore of a published night leaves the published rows as they were.
    before = sorted((r["image_id"], r["run_id"]) for r in read_night(output, DATE2))
    with pytest.raises(Exception, match="injected worker failure"):
        run_nightly(cfg, source, output, DATE2, rescore=True,
                    inject=lambda ds: ds.map_batches(fail_on_one_image, batch_size=2, batch_format="numpy"))
    assert sorted((r["image_id"], r["run_id"]) for r in read_night(output, DATE2)) == before


def test_rescore_replaces_the_nights_rows_and_keeps_one_row_per_image_across_nights(setup):
    cfg, _, source, output, (v1, _) = setup
    extra = os.path.join(source, "good", "zero_again.png")
    open(extra, "wb").close()  # a second empty file: same (empty) content as zero.png, another name
    try:
        summary = run_nightly(cfg, source, output, DATE2)
        assert summary["new_rows"] == 1  # only the new file; it is an error row, not skipped as zero.png's twin
        assert [(r["image_id"], r["error"]) for r in read_night(output, DATE2)] == [
            ("good/zero_again.png", "empty file (0 bytes)")]
        assert run_nightly(cfg, source, output, DATE2)["new_rows"] == 0
        first = {r["image_id"]: r["run_id"] for r in read_night(output, DATE1)}
        rescored = run_nightly(cfg, source, output, DATE1, rescore=True)
        rows = read_night(output, DATE1)
        assert sorted(r["image_id"] for r in rows) == sorted(first)  # replaced, not duplicated
        assert {r["run_id"] for r in rows} == {rescored["run_id"]} != set(first.values())
        everything = pq.read_table(output).to_pylist()  # every night: still one row per file for v1
        ids = [r["image_id"] for r in everything if r["model_version"] == v1]
        assert len(ids) == len(set(ids)) == 14
    finally:
        os.remove(extra)


def test_error_fraction_over_the_limit_fails_the_night_and_publishes_nothing(setup):
    cfg, _, source, output, _ = setup
    output = output + "-errors"
    cfg.data.max_error_fraction = 0.05  # 1 bad file of 13 is 7.7%
    try:
        with pytest.raises(TooManyErrors) as err:
            run_nightly(cfg, source, output, "2026-11-30")
    finally:
        cfg.data.max_error_fraction = 1.0
    assert "1 of 13 rows are errors" in str(err.value) and "good/zero.png: empty file" in str(err.value)
    assert not os.path.exists(partition_dir(output, "2026-11-30"))


def test_a_second_run_on_the_same_output_is_refused_and_dates_are_checked(setup):
    cfg, _, source, output, _ = setup
    with exclusive(output):
        with pytest.raises(NightlyBusy, match="another nightly run is writing"):
            run_nightly(cfg, source, output, DATE1)
    with pytest.raises(ValueError, match="expected a calendar date"):
        run_nightly(cfg, source, output, "2026-13-45")


def test_a_night_with_nothing_new_is_published_empty(setup):
    cfg, _, source, output, _ = setup
    summary = run_nightly(cfg, source, output, "2026-11-29")  # everything was scored on earlier nights
    assert summary["new_rows"] == 0 and summary["rows"] == 0
    assert pq.read_table(partition_dir(output, "2026-11-29")).num_rows == 0
    assert json.load(open(os.path.join(partition_dir(output, "2026-11-29"), SUCCESS)))["rows"] == 0


def test_new_version_behind_the_alias_is_picked_up_next_night(setup):
    cfg, _, source, output, (v1, v2) = setup
    MlflowClient().set_registered_model_alias("dinoar", "champion", v2)
    try:
        summary = run_nightly(cfg, source, output, DATE3)
        rows = read_night(output, DATE3)
        assert {r["model_version"] for r in rows} == {v2} and len(rows) == 13
        assert summary["model_uri"] == f"models:/dinoar/{v2}"
        assert {r["model_version"] for r in read_night(output, DATE1)} == {v1}  # earlier nights untouched
    finally:
        MlflowClient().set_registered_model_alias("dinoar", "champion", v1)
