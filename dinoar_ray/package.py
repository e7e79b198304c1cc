"""The model package: what MLflow stores and the registry points to.

    package.json          backbone reference, img_size, AR config, score aggregation, threshold, stats
    ar_model.safetensors  AR weights (never a pickle)

The backbone weights are referenced by id/revision, not copied.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from .ar_model import ARNet
from .backbone import ResolvedBackbone

FORMAT_VERSION = 1
META_FILE = "package.json"
WEIGHTS_FILE = "ar_model.safetensors"


@dataclass
class ModelPackage:
    backbone: dict  # ResolvedBackbone fields + img_size, resize, channels, grid
    ar: dict  # ARNet kwargs: mode, num_layers, hidden, kernel_size, dilations
    score: dict  # aggregation, topk_percent
    state_dict: dict[str, torch.Tensor]
    threshold: float | None = None
    calibration: dict = field(default_factory=dict)  # target_fpr, holdout scores and their statistics
    training: dict = field(default_factory=dict)  # epochs, final loss, image counts

    @property
    def resolved_backbone(self) -> ResolvedBackbone:
        fields_ = ("source", "revision", "kind", "name", "weights", "stages")
        return ResolvedBackbone(**{k: self.backbone[k] for k in fields_ if k in self.backbone})

    def build_model(self) -> ARNet:
        model = ARNet(self.backbone["channels"], **self.ar)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def meta(self) -> dict:
        return {"format_version": FORMAT_VERSION, "backbone": self.backbone, "ar": self.ar, "score": self.score,
                "threshold": self.threshold, "calibration": self.calibration, "training": self.training}

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in self.state_dict.items()}, os.path.join(directory, WEIGHTS_FILE))
        with open(os.path.join(directory, META_FILE), "w") as f:
            json.dump(self.meta(), f, indent=2)
        return directory

    @classmethod
    def from_parts(cls, meta: dict, weights: bytes) -> "ModelPackage":
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"model package format {meta.get('format_version')} is not supported "
                             f"(this dinoar-ray reads format {FORMAT_VERSION})")
        fields_ = {k: meta[k] for k in ("backbone", "ar", "score", "threshold", "calibration", "training")}
        return cls(state_dict=load_bytes(weights), **fields_)

    @classmethod
    def load(cls, directory: str) -> "ModelPackage":
        meta_path = os.path.join(directory, META_FILE)
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"{directory} is not a dinoar model package (no {META_FILE})")
        with open(meta_path) as f, open(os.path.join(directory, WEIGHTS_FILE), "rb") as w:
            return cls.from_parts(json.load(f), w.read())
