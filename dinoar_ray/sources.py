"""Archives -> a Ray Dataset of rows (image_id, source_uri, bytes), plus dataset layouts.

image_id is the path relative to the dataset root, so it is stable across runs and machines.
"""
from __future__ import annotations

import glob
import os
import tarfile
import zipfile
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "gif", "webp", "dcm"]
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
ROWS_PER_CHUNK = 64  # archive members are emitted in chunks, so a big shard never sits in memory whole


def is_image_name(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS if "." in name else False


def source_kind(uri: str) -> str:
    """folder | archive | parquet | manifest, from the path (or glob pattern) suffix."""
    lower = uri.lower().rstrip("/")
    if lower.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(".csv"):
        return "manifest"
    return "folder"


def _with_scheme(fs, path: str) -> str:
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return f"file://{path}" if protocol in ("file", "local") else f"{protocol}://{path.lstrip('/')}"


def _relative(path: str, root: str) -> str:
    prefix = root.rstrip("/") + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


def _relative_ids(batch: dict, root: str) -> dict:
    paths = batch.pop("path")
    batch["image_id"] = np.array([_relative(p, root) for p in paths], dtype=object)
    batch["source_uri"] = np.array([f"file://{p}" if p.startswith("/") else p for p in paths], dtype=object)
    batch["source_error"] = np.array([""] * len(paths), dtype=object)
    return batch


def _expand(uri: str) -> tuple[object, list[str], str]:
    """(fsspec filesystem, matching paths, root for relative ids) for a path, folder or glob pattern."""
    fs, path = fsspec.core.url_to_fs(uri)
    if glob.has_magic(path):
        root = path[: min(path.find(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]
        return fs, sorted(fs.glob(path)), root
    if fs.isdir(path):
        return fs, sorted(p for p in fs.find(path) if p.lower().endswith(ARCHIVE_SUFFIXES)), path
    if not fs.exists(path):
        raise FileNotFoundError(f"no such source: {uri}")
    return fs, [path], path.rsplit("/", 1)[0]


def _one_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]


def _unsafe_member(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def iter_archive(fs, shard: str, root: str):
    """Rows (image_id, source_uri, bytes, source_error) for the image members of one tar or zip shard."""
    shard_id, shard_uri = _relative(shard, root), _with_scheme(fs, shard)

    def row(member: str, data: bytes = b"", error: str = "") -> dict:
        return {"image_id": f"{shard_id}::{member}", "source_uri": f"{shard_uri}::{member}",
                "bytes": data, "source_error": error}

    with fs.open(shard, "rb") as f:
        try:
            if shard.lower().endswith(".zip"):
                with zipfile.ZipFile(f) as z:
                    for info in z.infolist():
                        if info.is_dir() or not is_image_name(info.filename):
                            continue
                        if _unsafe_member(info.filename):
                            yield row(info.filename, error="unsafe member path (escapes the archive); not read")
                            continue
                        try:  # zip members are read one by one: a bad one costs only its own row
                            data = z.read(info)
                        except Exception as exc:  # CRC, zlib, lzma, encrypted, unsupported method
                            yield row(info.filename, error=f"unreadable archive member: {_one_line(exc)}")
                            continue
                        yield row(info.filename, data)
            else:
                with tarfile.open(fileobj=f, mode="r|*") as t:  # streaming: no seeking, no extraction
                    for info in t:
                        if info.isdir() or not is_image_name(info.name):
                            continue
                        if _unsafe_member(info.name):
                            yield row(info.name, error="unsafe member path (escapes the archive); not read")
                        elif not info.isfile():
                            yield row(info.name, error="not a regular file in the archive (link or device)")
                        else:
                            yield row(info.name, t.extractfile(info).read())
        except Exception as exc:  # a tar stream cannot skip past damage: the rest of the shard is one error row
            yield {"image_id": shard_id, "source_uri": shard_uri, "bytes": b"",
                   "source_error": f"unreadable archive: {_one_line(exc)}"}


def _archive_rows(batch: dict, fs, root: str):
    for shard in batch["shard"]:
        chunk: list[dict] = []
        for r in iter_archive(fs, shard, root):
            chunk.append(r)
            if len(chunk) == ROWS_PER_CHUNK:
                yield _columns(chunk)
                chunk = []
        if chunk:
            yield _columns(chunk)


def _columns(rows: list[dict]) -> dict:
    return {k: np.array([r[k] for r in rows], dtype=object) for k in ("image_id", "source_uri", "bytes", "source_error")}


def fetch_uris(batch: dict, id_column: str | None, uri_column: str) -> dict:
    """Manifest rows -> bytes, read through fsspec; a missing or unreadable URI becomes an error row."""
    uris = [str(u) for u in batch[uri_column]]
    rows = []
    for i, uri in enumerate(uris):
        image_id = str(batch[id_column][i]) if id_column else uri
        try:
            with fsspec.open(uri, "rb") as f:
                rows.append({"image_id": image_id, "source_uri": uri, "bytes": f.read(), "source_error": ""})
        except Exception as exc:  # missing file, no driver for the scheme (ImportError), network, ...
            reason = "file not found" if isinstance(exc, FileNotFoundError) else _one_line(exc)
            rows.append({"image_id": image_id, "source_uri": uri, "bytes": b"", "source_error": f"unreadable: {reason}"})
    return _columns(rows) if rows else {k: np.array([], dtype=object) for k in ("image_id", "source_uri", "bytes", "source_error")}


def read_source_bytes(source_uri: str, id_column: str = "image_id", bytes_column: str = "bytes") -> bytes:
    """The bytes behind one row's source_uri: a file or URL, `<shard>::<member>`, or `<table.parquet>::<id>`.

    For the few images a report draws again after scoring; the batch path never calls this.
    """
    path, sep, key = source_uri.partition("::")
    if sep and source_kind(path) == "archive":
        fs, shard = fsspec.core.url_to_fs(path)
        for r in iter_archive(fs, shard, root=""):
            if r["image_id"].split("::", 1)[-1] == key and not r["source_error"]:
                return r["bytes"]
        raise FileNotFoundError(f"{key} is not a readable member of {path}")
    if sep and source_kind(path) == "parquet":
        fs, table_path = fsspec.core.url_to_fs(path)
        with fs.open(table_path, "rb") as f:
            id_type = pq.read_schema(f).field(id_column).type  # ids are strings in rows, maybe not in the table
            value = pa.scalar(key).cast(id_type).as_py()
            table = pq.read_table(f, columns=[id_column, bytes_column], filters=[(id_column, "=", value)])
        if table.num_rows == 0:
            raise FileNotFoundError(f"no row with {id_column} = {key} in {path}")
        return table[bytes_column][0].as_py()
    with fsspec.open(source_uri, "rb") as f:
        return f.read()


def read_images(path: str, root: str | None = None, data=None) -> ray.data.Dataset:
    """Any supported source as a Dataset of rows (image_id, source_uri, bytes, source_error).

    Folders (recursive, image extensions in any case), glob patterns, tar/zip shards (a file, a
    glob, or a folder of them), Parquet tables with a bytes column, and manifests (CSV or Parquet
    listing URIs), on any filesystem fsspec or pyarrow understands (file://, s3://, gs://, ...).
    Undecodable files are still rows: decoding happens later, per row, so they become error rows.
    """
    kind = source_kind(path)
    bytes_column = getattr(data, "bytes_column", "bytes")
    id_column = getattr(data, "id_column", "image_id")
    uri_column = getattr(data, "uri_column", "uri")
    if kind == "archive" or (kind == "folder" and _is_folder_of_archives(path)):
        fs, shards, base = _expand(path)
        if not shards:
            raise FileNotFoundError(f"no tar/zip shards match {path}")
        shard_ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
        return shard_ds.map_batches(_archive_rows, fn_kwargs={"fs": fs, "root": root or base},
                                    batch_size=1, batch_format="numpy")
    if kind in ("parquet", "manifest"):
        fs, files, base = _expand(path)
        if not files:
            raise FileNotFoundError(f"no files match {path}")
        names = pq.read_schema(fs.open(files[0], "rb")).names if kind == "parquet" else []
        if kind == "parquet" and bytes_column in names:
            if id_column not in names:
                raise ValueError(f"{path}: no id column '{id_column}' (columns: {names}); set data.id_column")
            table = ray.data.read_parquet([_with_scheme(fs, f) for f in files], columns=[id_column, bytes_column],
                                          include_paths=True)
            return table.map_batches(_parquet_rows, fn_kwargs={"id_column": id_column, "bytes_column": bytes_column},
                                     batch_format="numpy")
        reader = ray.data.read_parquet if kind == "parquet" else ray.data.read_csv
        manifest = reader([_with_scheme(fs, f) for f in files])
        columns = manifest.columns()
        if uri_column not in columns:
            raise ValueError(f"{path}: neither a bytes column '{bytes_column}' nor a URI column '{uri_column}' "
                             f"(columns: {columns}); set data.bytes_column or data.uri_column")
        return manifest.map_batches(fetch_uris, fn_kwargs={"id_column": id_column if id_column in columns else None,
                                                           "uri_column": uri_column}, batch_format="numpy")
    return _read_folder(path, root)


def check_source(path: str) -> None:
    """Fail fast, before any cluster work, when a source plainly does not exist."""
    fs, p = fsspec.core.url_to_fs(path)
    if glob.has_magic(p):
        if not fs.glob(p):
            raise FileNotFoundError(f"nothing matches the source pattern {path}")
    elif not fs.exists(p):
        raise FileNotFoundError(f"no such source: {path} (a folder, glob, shard, Parquet table or manifest)")


def _is_folder_of_archives(path: str) -> bool:
    fs, p = fsspec.core.url_to_fs(path)
    if glob.has_magic(p) or not fs.isdir(p):
        return False
    files = fs.find(p)
    return bool(files) and all(f.lower().endswith(ARCHIVE_SUFFIXES) for f in files if not is_image_name(f)) \
        and not any(is_image_name(f) for f in files)


def _parquet_rows(batch: dict, id_column: str, bytes_column: str) -> dict:
    paths = batch["path"]
    ids = [str(i) for i in batch[id_column]]
    return {"image_id": np.array(ids, dtype=object),
            "source_uri": np.array([f"{p}::{i}" for p, i in zip(paths, ids)], dtype=object),
            "bytes": np.array([b if b is not None else b"" for b in batch[bytes_column]], dtype=object),
            "source_error": np.array([""] * len(ids), dtype=object)}


def _read_folder(path: str, root: str | None) -> ray.data.Dataset:
    fs, p = fsspec.core.url_to_fs(path)
    if glob.has_magic(p):
        matches = [m for m in fs.glob(p) if is_image_name(m)]
        if not matches:
            raise FileNotFoundError(f"no image files match {path}")
        base = p[: min(p.find(c) for c in "*?[" if c in p)].rsplit("/", 1)[0]
        ds = ray.data.read_binary_files([_with_scheme(fs, m) for m in matches], include_paths=True)
        return ds.map_batches(_relative_ids, fn_kwargs={"root": root or base}, batch_format="numpy")
    if not fs.exists(p):
        raise FileNotFoundError(f"no such image folder: {path}")
    local = not isinstance(path, str) or "://" not in path or path.startswith("file://")
    target = os.path.abspath(p) if local else path
    base = os.path.abspath(root) if (root and local) else (root or (os.path.abspath(p) if local else p))
    ds = ray.data.read_binary_files(target, include_paths=True, file_extensions=IMAGE_EXTENSIONS)
    return ds.map_batches(_relative_ids, fn_kwargs={"root": base}, batch_format="numpy")


# ---- dataset layouts --------------------------------------------------------------------------

@dataclass(frozen=True)
class MVTecLayout:
    """root/train/good/*, root/test/<good|defect>/*, root/ground_truth/<defect>/<stem>_mask.png."""

    root: str

    @property
    def train_dir(self) -> str:
        return os.path.join(self.root, "train", "good")

    @property
    def test_dir(self) -> str:
        return os.path.join(self.root, "test")

    @staticmethod
    def is_mvtec(root: str) -> bool:
        return os.path.isdir(os.path.join(root, "train", "good")) and os.path.isdir(os.path.join(root, "test"))

    @staticmethod
    def defect_type(image_id: str) -> str:
        """'test/crack/x.png' (relative to the root) or 'crack/x.png' (relative to test/) -> 'crack'."""
        parts = image_id.split("/")
        if len(parts) == 3 and parts[0] == "test":
            return parts[1]
        if len(parts) == 2:
            return parts[0]
        raise ValueError(f"{image_id!r} is not a test image of an MVTec layout (test/<type>/<file>, ids relative "
                         "to the dataset root or to its test/ folder)")

    def is_anomalous(self, image_id: str) -> bool:
        return self.defect_type(image_id) != "good"

    def mask_path(self, image_id: str) -> str | None:
        """Ground-truth mask of a defect image; None for good images."""
        kind = self.defect_type(image_id)
        if kind == "good":
            return None
        stem = os.path.splitext(os.path.basename(image_id))[0]
        return os.path.join(self.root, "ground_truth", kind, f"{stem}_mask.png")


@dataclass(frozen=True)
class BMADLayout:
    """root/train/good/img/*, root/{valid,test}/{good,Ungood}/{img,label}/, label = same file name."""

    root: str
    split: str = "test"

    @property
    def train_dir(self) -> str:
        return os.path.join(self.root, "train", "good", "img")

    @property
    def test_dir(self) -> str:
        return os.path.join(self.root, self.split)

    @staticmethod
    def is_bmad(root: str) -> bool:
        return os.path.isdir(os.path.join(root, "train", "good", "img"))

    def _parts(self, image_id: str) -> list[str]:
        parts = image_id.split("/")
        if len(parts) == 3:  # relative to the evaluated split's folder
            parts = [self.split, *parts]
        if len(parts) != 4 or parts[0] not in ("valid", "test") or parts[2] != "img":
            raise ValueError(f"{image_id!r} is not a BMAD evaluation image ({{valid,test}}/<good|Ungood>/img/<file>)")
        return parts

    def is_anomalous(self, image_id: str) -> bool:
        return self._parts(image_id)[1] != "good"

    def mask_path(self, image_id: str) -> str | None:
        split, kind, _, name = self._parts(image_id)
        return None if kind == "good" else os.path.join(self.root, split, kind, "label", name)


@dataclass(frozen=True)
class NormalsLayout:
    """A folder of normal images and nothing else: every image is normal, no masks."""

    root: str

    @property
    def train_dir(self) -> str:
        return self.root

    @property
    def test_dir(self) -> str:
        return self.root

    def is_anomalous(self, image_id: str) -> bool:
        return False

    def mask_path(self, image_id: str) -> str | None:
        return None


def detect_layout(root: str):
    """MVTec, BMAD, or a plain folder of normals, from what is on disk."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such dataset folder: {root}")
    if BMADLayout.is_bmad(root):  # first: a BMAD root also has train/good/ and test/
        return BMADLayout(root)
    if MVTecLayout.is_mvtec(root):
        return MVTecLayout(root)
    return NormalsLayout(root)


def resolve_data_dirs(root: str, train: str = "", test: str = "") -> tuple[str, str]:
    """Train and test folders from a data config: explicit paths win, else the layout of root."""
    if root and not (train and test):
        layout = detect_layout(root)
        if isinstance(layout, NormalsLayout):
            raise ValueError(f"data.root: {root} is neither MVTec (train/good/, test/) nor BMAD (train/good/img/); "
                             "set data.train and data.test to image folders or other sources instead")
        train, test = train or layout.train_dir, test or layout.test_dir
    return train, test
