"""Archives -> a Ray Dataset of rows (image_id, source_uri, bytes), plus dataset layouts.

image_id is the path relative to the dataset root, so it is stable across runs and machines.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import ray

IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "gif", "webp"]


def _relative_ids(batch: dict, root: str) -> dict:
    paths = batch.pop("path")
    prefix = root.rstrip("/") + "/"
    batch["image_id"] = np.array([p[len(prefix):] if p.startswith(prefix) else p for p in paths], dtype=object)
    batch["source_uri"] = np.array([f"file://{p}" if p.startswith("/") else p for p in paths], dtype=object)
    return batch


def read_images(path: str, root: str | None = None) -> ray.data.Dataset:
    """Every image file under `path` (recursive, extensions case-insensitive) as one row.

    Undecodable files are still rows: decoding happens later, per row, so they become error rows.
    """
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such image folder: {path}")
    root = os.path.abspath(root or path)
    ds = ray.data.read_binary_files(path, include_paths=True, file_extensions=IMAGE_EXTENSIONS)
    return ds.map_batches(_relative_ids, fn_kwargs={"root": root}, batch_format="numpy")


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
        """'test/crack/x.png' -> 'crack'."""
        parts = image_id.split("/")
        if len(parts) < 3 or parts[0] != "test":
            raise ValueError(f"{image_id!r} is not a test image of an MVTec layout (test/<type>/<file>)")
        return parts[1]

    def is_anomalous(self, image_id: str) -> bool:
        return self.defect_type(image_id) != "good"

    def mask_path(self, image_id: str) -> str | None:
        """Ground-truth mask of a defect image; None for good images."""
        kind = self.defect_type(image_id)
        if kind == "good":
            return None
        stem = os.path.splitext(os.path.basename(image_id))[0]
        return os.path.join(self.root, "ground_truth", kind, f"{stem}_mask.png")


def resolve_data_dirs(root: str, train: str = "", test: str = "") -> tuple[str, str]:
    """Train and test folders from a data config: explicit paths win, else the MVTec layout of root."""
    if root and not (train and test):
        if not MVTecLayout.is_mvtec(root):
            raise ValueError(f"data.root: {root} is not in MVTec layout (needs train/good/ and test/); "
                             "set data.train and data.test to plain image folders instead")
        layout = MVTecLayout(os.path.abspath(root))
        train, test = train or layout.train_dir, test or layout.test_dir
    return train, test
