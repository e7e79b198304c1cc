"""Every source type holding the same good and bad files: rows out == files in, the right statuses
and reasons, and the same score for the same image whatever container it came in."""
import csv
import hashlib
import io
import os
import tarfile
import zipfile

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tiny_config, tiny_package
from PIL import Image

from dinoar_ray.score import score_dataset
from dinoar_ray.sources import fetch_uris, iter_archive, read_images, read_source_bytes, source_kind


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


rng = np.random.default_rng(0)
GOOD = {f"img{i}.png": encode(rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(4)}
GOOD["grey16.png"] = encode(rng.integers(0, 65535, (30, 30), dtype=np.uint16))
BAD = {"zero.png": b"", "text.png": b"just some text", "cut.png": GOOD["img1.png"][:120]}
REASONS = {"zero.png": "empty file (0 bytes)", "text.png": "not an image (format not recognised)",
           "cut.png": "corrupt image"}
FILES = {**GOOD, **BAD}


@pytest.fixture(scope="module")
def containers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources")
    folder = tmp / "folder"
    (folder / "nested").mkdir(parents=True)
    for i, (name, data) in enumerate(FILES.items()):
        target = folder / "nested" / name.upper() if i % 3 == 0 else folder / name  # mixed case, subfolder
        target.write_bytes(data)
    (folder / "notes.txt").write_text("not an image extension: not a row")

    def tar_with_tricks(path, compressed=False):
        with tarfile.open(path, "w:gz" if compressed else "w") as t:
            for name, data in FILES.items():
                info = tarfile.TarInfo(f"shard/{name}")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            for evil in ("../escape.png", "/etc/abs.png"):
                info = tarfile.TarInfo(evil)
                info.size = 4
                t.addfile(info, io.BytesIO(b"evil"))
            link = tarfile.TarInfo("shard/link.png")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            t.addfile(link)

    (tmp / "shards").mkdir()
    tar_with_tricks(tmp / "shards" / "a.tar")
    tar_with_tricks(tmp / "shards" / "b.tar.gz", compressed=True)
    with zipfile.ZipFile(tmp / "c.zip", "w") as z:
        for name, data in FILES.items():
            z.writestr(f"zipped/{name}", data)
        z.writestr("../../escape.png", b"evil")

    table = pa.table({"key": list(FILES), "payload": list(FILES.values())})
    pq.write_table(table, tmp / "table.parquet")

    with open(tmp / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri"])
        for name in FILES:
            w.writerow([f"file://{folder / name}" if (folder / name).exists() else f"file://{folder / 'nested' / name.upper()}"])
        w.writerow([f"file://{tmp / 'missing.png'}"])
    pq.write_table(pa.table({"uri": [f"file://{tmp / 'table.parquet'}.nope"]}), tmp / "manifest.parquet")
    return tmp


def collect(ds):
    return {r["image_id"]: r for r in ds.take_all()}


def test_kind_detection():
    assert [source_kind(p) for p in ("a/", "x.tar", "s3://b/x-*.tar.gz", "t.parquet", "m.csv", "y.zip")] == [
        "folder", "archive", "archive", "parquet", "manifest", "archive"]


def test_every_container_gives_one_row_per_file_and_the_same_scores(ray_session, containers, tmp_path):
    cfg = tiny_config(tmp_path, **{"data.id_column": "key", "data.bytes_column": "payload"})
    package = tiny_package()
    provenance = {"model_name": "m", "model_version": "1", "model_uri": "models:/m/1", "backbone": "x", "run_id": "r"}
    expected_rows = {
        "folder": len(FILES),
        "glob": len(GOOD),  # img*.png at the top level only... see below
        "shards": 2 * (len(FILES) + 3),  # + ../escape, /etc/abs, link, per tar
        "zip": len(FILES) + 1,
        "parquet": len(FILES),
        "csv": len(FILES) + 1,  # + the missing URI
        "manifest_parquet": 1,  # a Parquet manifest whose only URI does not exist
    }
    sources = {
        "folder": str(containers / "folder"),
        "glob": str(containers / "folder" / "*.png"),
        "shards": str(containers / "shards"),
        "zip": str(containers / "c.zip"),
        "parquet": str(containers / "table.parquet"),
        "csv": str(containers / "manifest.csv"),
        "manifest_parquet": str(containers / "manifest.parquet"),
    }
    top_level_pngs = [n for n in os.listdir(containers / "folder") if n.endswith(".png")]
    expected_rows["glob"] = len(top_level_pngs)
    scores_by_hash: dict[str, set] = {}
    for kind, uri in sources.items():
        rows = score_dataset(read_images(uri, data=cfg.data), package, provenance, cfg).take_all()
        assert len(rows) == expected_rows[kind], kind
        for r in rows:
            assert r["source_uri"] and r["image_id"] and len(r["content_sha256"]) == 64, (kind, r["image_id"])
            name = r["image_id"].rsplit("/", 1)[-1].rsplit("::", 1)[-1].lower()
            if r["status"] == "ok":
                scores_by_hash.setdefault(r["content_sha256"], set()).add(round(float(r["score"]), 5))
                # Reports fetch an image again from its source_uri alone, whatever container it is in.
                again = read_source_bytes(r["source_uri"], "key", "payload")
                assert hashlib.sha256(again).hexdigest() == r["content_sha256"], (kind, r["source_uri"])
            elif name in REASONS:
                assert r["error"].startswith(REASONS[name]), (kind, r["image_id"], r["error"])
            elif "escape" in name or "abs.png" in name:
                assert r["error"] == "unsafe member path (escapes the archive); not read"
            elif name == "link.png":
                assert r["error"].startswith("not a regular file")
            else:
                assert kind in ("csv", "manifest_parquet") and r["error"] == "unreadable: file not found", (kind, r)
        ok_names = {r["image_id"].rsplit("/", 1)[-1].rsplit("::", 1)[-1].lower() for r in rows if r["status"] == "ok"}
        assert ok_names <= set(GOOD) and (kind in ("glob", "manifest_parquet") or ok_names == set(GOOD)), kind
    # Every good image was scored in several containers, always to the same value.
    assert len(scores_by_hash) == len(GOOD)
    assert all(len(v) == 1 for v in scores_by_hash.values()), scores_by_hash


def test_image_ids_are_stable_relative_paths(ray_session, containers, tmp_path):
    cfg = tiny_config(tmp_path, **{"data.id_column": "key", "data.bytes_column": "payload"})
    folder_ids = set(collect(read_images(str(containers / "folder"), data=cfg.data)))
    assert "img1.png" in folder_ids and "nested/IMG0.PNG" in folder_ids
    shard_ids = set(collect(read_images(str(containers / "shards"), data=cfg.data)))
    assert "a.tar::shard/img2.png" in shard_ids and "b.tar.gz::shard/img2.png" in shard_ids
    assert set(collect(read_images(str(containers / "table.parquet"), data=cfg.data))) == set(FILES)


def test_in_memory_filesystem_archives_and_manifests():
    fs = fsspec.filesystem("memory")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x/good.png", GOOD["img0.png"])
        z.writestr("../bad.png", b"x")
    fs.pipe("/bucket/shard.zip", buf.getvalue())
    rows = list(iter_archive(fs, "/bucket/shard.zip", "/bucket"))
    assert [(r["image_id"], bool(r["source_error"])) for r in rows] == [("shard.zip::x/good.png", False),
                                                                      ("shard.zip::../bad.png", True)]
    assert rows[0]["bytes"] == GOOD["img0.png"] and rows[0]["source_uri"] == "memory://bucket/shard.zip::x/good.png"
    fs.pipe("/bucket/a.png", GOOD["img1.png"])
    fetched = fetch_uris({"uri": np.array(["memory://bucket/a.png", "memory://bucket/none.png"], dtype=object)},
                         None, "uri")
    assert fetched["bytes"][0] == GOOD["img1.png"] and fetched["source_error"][0] == ""
    assert fetched["source_error"][1] == "unreadable: file not found"


def test_missing_source_and_unknown_columns_are_clear_errors(ray_session, containers, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        read_images(str(tmp_path / "nothing-here"))
    with pytest.raises(ValueError, match="set data.bytes_column or data.uri_column"):
        read_images(str(containers / "table.parquet"))  # default column names are absent


def test_a_damaged_zip_member_costs_only_its_own_row_and_unknown_schemes_are_error_rows():
    fs = fsspec.filesystem("memory")
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes() * 4
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("bad.png", noise)  # compressible, so its deflate stream can be damaged below
        z.writestr("good.png", GOOD["img0.png"])
    data = bytearray(buf.getvalue())
    start = data.index(b"bad.png") + len("bad.png")  # the member's compressed bytes follow its local header
    for i in range(start + 20, start + 60):
        data[i] ^= 0xFF
    fs.pipe("/bucket/damaged.zip", bytes(data))
    rows = list(iter_archive(fs, "/bucket/damaged.zip", "/bucket"))
    assert [r["image_id"] for r in rows] == ["damaged.zip::bad.png", "damaged.zip::good.png"]
    assert rows[0]["source_error"].startswith("unreadable archive member: ")
    assert rows[1]["source_error"] == "" and rows[1]["bytes"] == GOOD["img0.png"]
    fetched = fetch_uris({"uri": np.array(["nosuchscheme://bucket/x.png"], dtype=object)}, None, "uri")
    assert fetched["source_error"][0].startswith("unreadable: ") and len(fetched["bytes"]) == 1
