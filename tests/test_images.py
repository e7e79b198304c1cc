import io

import numpy as np
import pytest
from PIL import Image

from dinoar_ray.images import decode


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_grey_becomes_three_equal_channels():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb, err = decode(encode(Image.fromarray(arr)))
    assert err is None and rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == arr).all() and (rgb[..., 1] == arr).all() and (rgb[..., 2] == arr).all()


def test_sixteen_bit_is_windowed_by_min_max():
    arr = np.array([[1000, 2000], [3000, 5000]], dtype=np.uint16)
    rgb, err = decode(encode(Image.fromarray(arr)))
    assert err is None
    assert rgb[..., 0].tolist() == [[0, 64], [128, 255]]  # (v - 1000) / 4000 * 255, rounded


def test_alpha_is_composited_on_black():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = [[255, 0], [128, 255]]
    rgb, err = decode(encode(Image.fromarray(rgba, "RGBA")))
    assert err is None and rgb[0, 0].tolist() == [200, 0, 0] and rgb[0, 1].tolist() == [0, 0, 0]
    assert abs(int(rgb[1, 0, 0]) - 100) <= 1


def test_exif_orientation_is_applied():
    arr = np.zeros((2, 4, 3), dtype=np.uint8)  # 4 wide, 2 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rgb, err = decode(encode(Image.fromarray(arr), "JPEG", exif=exif))
    assert err is None and rgb.shape == (4, 2, 3)


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"this is a text file, not a picture", "not an image"),
])
def test_bad_bytes_give_a_reason(data, reason):
    rgb, err = decode(data)
    assert rgb is None and reason in err


def test_truncated_png_is_a_corrupt_row_not_an_exception():
    good = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))
    rgb, err = decode(good[: len(good) // 2])
    assert rgb is None and err.startswith("corrupt image") and "\n" not in err


def test_pixel_limit_is_checked_before_decoding():
    big = encode(Image.new("L", (300, 300)))
    rgb, err = decode(big, max_pixels=50_000)
    assert rgb is None and "90000 pixels > limit 50000" in err
