"""Raw bytes -> RGB uint8 array, or a one-line reason why not. Never raises for bad input.

Documented behaviour (see README, "Supported inputs"):
- 8-bit grey, palette, 1-bit, CMYK, YCbCr: converted to RGB;
- alpha (LA, RGBA, PA, palette transparency): composited on `background`;
- 16-bit and 32-bit integer / float images: scaled to 8 bit by a window: `minmax` (per image,
  default), `fixed` (window_min..window_max) or `full` (the type's full range; floats: 0..1);
- EXIF orientation applied; multi-page TIFF and animated GIF/WebP: the first frame;
- DICOM (optional extra `dicom`): rescale slope/intercept, then the file's window centre/width when
  present, else the window above;
- the pixel count is checked from the header before decoding: over `max_pixels` is an error row.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 64_000_000
# Pillow decoders tried on raw bytes. Raster formats only: EPS/PS/PDF would be handed to Ghostscript.
Image.init()  # register every plugin, so the list below can name them
RASTER_FORMATS = tuple(f for f in ("PNG", "JPEG", "MPO", "BMP", "DIB", "TIFF", "GIF", "WEBP", "PPM", "TGA", "ICO",
                                   "JPEG2000") if f in Image.OPEN)
# Our own limit (options.max_pixels) is checked from the header before any pixel is decoded, so
# Pillow's global guard is switched off to let that limit, and its message, be the one that applies.
Image.MAX_IMAGE_PIXELS = None
WINDOWS = ("minmax", "fixed", "full")


@dataclass(frozen=True)
class DecodeOptions:
    max_pixels: int = DEFAULT_MAX_PIXELS
    window: str = "minmax"  # minmax | fixed | full
    window_min: float = 0.0  # for window=fixed
    window_max: float = 65535.0
    background: tuple[int, int, int] = (0, 0, 0)  # alpha is composited on this


def window_to_uint8(array: np.ndarray, options: DecodeOptions, full_range: tuple[float, float] | None = None,
                    centre_width: tuple[float, float] | None = None) -> np.ndarray:
    """Any numeric array -> uint8 by the chosen window; NaN/inf count as the window's low end."""
    a = array.astype(np.float64)
    finite = a[np.isfinite(a)]
    if centre_width is not None:
        c, w = centre_width
        lo, hi = c - w / 2, c + w / 2
    elif options.window == "fixed":
        lo, hi = options.window_min, options.window_max
    elif options.window == "full" and full_range is not None:
        lo, hi = full_range
    else:  # minmax, and full for floats of unknown range
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    a = np.where(np.isfinite(a), a, lo)
    scaled = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.clip(np.round(scaled * 255), 0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _to_rgb(image: Image.Image, options: DecodeOptions) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _grey_to_rgb(window_to_uint8(np.asarray(image), options, (0, 65535)))
    if image.mode == "I":
        array = np.asarray(image)
        full = (0, 65535) if array.size and array.min() >= 0 and array.max() <= 65535 else (-2**31, 2**31 - 1)
        return _grey_to_rgb(window_to_uint8(array, options, full))
    if image.mode == "F":
        return _grey_to_rgb(window_to_uint8(np.asarray(image), options, (0.0, 1.0)))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, tuple(options.background) + (255,))
        image = Image.alpha_composite(canvas, image)
    return np.asarray(image.convert("RGB"))


def _is_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def _decode_dicom(data: bytes, options: DecodeOptions) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise ValueError("DICOM file, but pydicom is not installed (pip install 'dinoar-ray[dicom]')") from None
    ds = pydicom.dcmread(io.BytesIO(data))
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows * cols > options.max_pixels:
        raise OverflowError(f"image too large: {cols}x{rows} = {rows * cols} pixels > limit {options.max_pixels}")
    pixels = ds.pixel_array
    if pixels.ndim == 3 and pixels.shape[-1] != 3:  # multi-frame: the first frame
        pixels = pixels[0]
    if pixels.ndim == 3:
        return pixels.astype(np.uint8)
    values = pixels * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    centre, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    first = (lambda v: float(v[0]) if isinstance(v, pydicom.multival.MultiValue) else float(v))
    centre_width = (first(centre), first(width)) if centre is not None and width is not None else None
    info = np.iinfo(pixels.dtype) if np.issubdtype(pixels.dtype, np.integer) else None
    grey = window_to_uint8(values, options, (info.min, info.max) if info else None, centre_width)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        grey = 255 - grey
    return _grey_to_rgb(grey)


def decode(data: bytes, max_pixels: int | None = None, options: DecodeOptions | None = None
           ) -> tuple[np.ndarray | None, str | None]:
    """Returns (RGB uint8 [H, W, 3], None) or (None, one-line reason)."""
    options = options or DecodeOptions()
    if max_pixels is not None:
        options = DecodeOptions(max_pixels, options.window, options.window_min, options.window_max, options.background)
    if not data:
        return None, "empty file (0 bytes)"
    try:
        if _is_dicom(data):
            return _decode_dicom(data, options), None
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)
            width, height = image.size
            if width * height > options.max_pixels:
                return None, (f"image too large: {width}x{height} = {width * height} pixels > limit "
                              f"{options.max_pixels}")
            if width < 1 or height < 1:
                return None, f"image has no pixels ({width}x{height})"
            image.seek(0)  # multi-page TIFF / animated GIF: first frame
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image, options), None
    except Image.UnidentifiedImageError:
        return None, "not an image (format not recognised)"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, OverflowError) as exc:
        return None, f"image too large: {exc}"
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, AttributeError) as exc:
        # Truncated or corrupt data, or a container that lies about what it holds.
        return None, f"corrupt image: {' '.join(str(exc).split())[:200] or type(exc).__name__}"
