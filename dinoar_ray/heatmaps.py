"""Overlays (image + colour-mapped anomaly map + mask outline) and the nightly HTML report."""
from __future__ import annotations

import base64
import html
import io
import os

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.ndimage import binary_erosion  # noqa: E402

from .evaluate import upsample  # noqa: E402


def overlay(image: np.ndarray, heatmap: np.ndarray, vmin: float, vmax: float, mask: np.ndarray | None = None,
            alpha: float = 0.5, resize: str = "squash") -> Image.Image:
    """RGB image [H, W, 3] blended with the map upsampled to [H, W]; the mask outline drawn in green."""
    h, w = image.shape[:2]
    values = np.clip((upsample(heatmap, h, w, resize) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    colours = (matplotlib.colormaps["inferno"](values)[..., :3] * 255).astype(np.float32)
    blended = ((1 - alpha) * image.astype(np.float32) + alpha * colours).astype(np.uint8)
    if mask is not None and mask.any():
        outline = mask & ~binary_erosion(mask, iterations=max(1, min(h, w) // 150))
        blended[outline] = (0, 255, 0)
    return Image.fromarray(blended)


def histogram_png(night: np.ndarray, normals: np.ndarray, threshold: float | None) -> bytes:
    """Tonight's score histogram against the training normals' (held-out) scores, as PNG bytes."""
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    values = np.concatenate([night, normals]) if len(normals) else night
    bins = np.histogram_bin_edges(values, bins=40) if len(values) else 10
    if len(normals):
        ax.hist(normals, bins=bins, density=True, alpha=0.5, label=f"training normals (n={len(normals)})")
    if len(night):
        ax.hist(night, bins=bins, density=True, alpha=0.5, label=f"tonight (n={len(night)})")
    if threshold is not None:
        ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("image score")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(path: str, title: str, summary: dict, top: list[dict], errors: list[dict],
                 histogram: bytes) -> str:
    """A self-contained HTML page: summary, histogram, top-K with overlays, error list."""
    e = html.escape
    here = os.path.dirname(path)

    def top_row(rank: int, r: dict) -> str:
        flag = {True: "yes", False: "no"}.get(r.get("is_anomalous"), "-")
        png = r.get("heatmap_png")
        img = f'<img src="{e(os.path.relpath(png, here))}" width="256" alt="overlay">' if png else ""
        return (f"<tr><td>{rank}</td><td>{e(r['image_id'])}</td><td>{r['score']:.5g}</td>"
                f"<td>{flag}</td><td>{img}</td></tr>")

    rows = "".join(top_row(i + 1, r) for i, r in enumerate(top))
    error_rows = "".join(f"<tr><td>{e(r['image_id'])}</td><td>{e(r['error'] or '')}</td></tr>" for r in errors)
    facts = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in summary.items())
    page = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style>
</head>
<body>
<h1>{e(title)}</h1>
<h2>Summary</h2>
<table>{facts}</table>
<h2>Scores against the training normals</h2>
<img src="data:image/png;base64,{base64.b64encode(histogram).decode()}" alt="score histogram">
<h2>Top {len(top)} images</h2>
<table><tr><th>#</th><th>image</th><th>score</th><th>anomalous</th><th>overlay</th></tr>{rows}</table>
<h2>Errors ({len(errors)})</h2>
<table><tr><th>image</th><th>reason</th></tr>{error_rows}</table>
</body>
</html>
"""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(page)
    return path
