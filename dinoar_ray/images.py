"""Raw bytes -> RGB uint8 array, or a one-line reason why not. Never raises for bad input."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# The pixel limit is checked from the header before decoding, so a bomb never allocates.
DEFAULT_MAX_PIXELS = 64_000_000


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """High bit-depth or float grey -> uint8 by the image's own min/max window."""
    a = array.astype(np.float64)
    finite = a[np.isfinite(a)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    scaled = (np.nan_to_num(a, nan=lo) - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey = _to_uint8(np.asarray(image))
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, background + (255,))
        image = Image.alpha_composite(canvas, image)
    return np.asarray(image.convert("RGB"))


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
           background: tuple[int, int, int] = (0, 0, 0)) -> tuple[np.ndarray | None, str | None]:
    """Returns (RGB uint8 [H, W, 3], None) or (None, reason)."""
    if not data:
        return None, "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                return None, f"image too large: {width}x{height} = {width * height} pixels > limit {max_pixels}"
            if width < 1 or height < 1:
                return None, f"image has no pixels ({width}x{height})"
            image.seek(0)  # multi-page TIFF / animated GIF: first frame
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image, background), None
    except Image.UnidentifiedImageError:
        return None, "not an image (format not recognised)"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, f"image too large: {exc}"
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        return None, f"corrupt image: {' '.join(str(exc).split())[:200]}"
