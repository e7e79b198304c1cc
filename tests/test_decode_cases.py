"""Every odd input of the decoding policy, generated at test time with Pillow/numpy/pydicom."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from dinoar_ray.backbone import IMAGENET_MEAN, IMAGENET_STD, content_box, preprocess
from dinoar_ray.evaluate import upsample
from dinoar_ray.images import DecodeOptions, decode


def png(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


GREY16 = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)


@pytest.mark.parametrize("options,expected", [
    (DecodeOptions(), [[0, 4], [117, 255]]),  # per-image min/max: v / 65535 * 255
    (DecodeOptions(window="full"), [[0, 4], [117, 255]]),  # same here: this image spans the full range
    (DecodeOptions(window="fixed", window_min=1000, window_max=31000), [[0, 0], [246, 255]]),  # 246.5 rounds to even
])
def test_sixteen_bit_windows(options, expected):
    rgb, err = decode(png(Image.fromarray(GREY16)), options=options)
    assert err is None and rgb[..., 0].tolist() == expected and (rgb[..., 0] == rgb[..., 2]).all()


def test_sixteen_bit_full_range_differs_from_minmax_on_a_narrow_image():
    narrow = np.array([[1000, 2000]], dtype=np.uint16)
    assert decode(png(Image.fromarray(narrow)))[0][0, :, 0].tolist() == [0, 255]
    assert decode(png(Image.fromarray(narrow)), options=DecodeOptions(window="full"))[0][0, :, 0].tolist() == [4, 8]


def test_float_tiff_with_nan_uses_minmax_and_maps_nan_low():
    values = np.array([[0.5, 1.5], [np.nan, 2.5]], dtype=np.float32)
    rgb, err = decode(png(Image.fromarray(values, mode="F"), "TIFF"))
    assert err is None and rgb[..., 0].tolist() == [[0, 128], [0, 255]]


def test_cmyk_palette_one_bit_and_la():
    cmyk = Image.new("CMYK", (3, 2), (0, 255, 255, 0))  # pure red in CMYK
    assert decode(png(cmyk, "JPEG", quality=100))[0][0, 0].tolist() == pytest.approx([254, 0, 0], abs=3)
    pal = Image.new("P", (2, 2))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    assert decode(png(pal))[0][1, 1].tolist() == [10, 200, 30]
    one_bit = Image.new("1", (4, 1))
    one_bit.putpixel((2, 0), 1)
    assert decode(png(one_bit))[0][0, :, 0].tolist() == [0, 0, 255, 0]
    la = Image.new("LA", (1, 1), (200, 0))  # fully transparent grey
    assert decode(png(la), options=DecodeOptions(background=(255, 255, 255)))[0][0, 0].tolist() == [255, 255, 255]


def test_multipage_tiff_and_animated_gif_give_the_first_frame():
    pages = [Image.new("L", (2, 2), v) for v in (10, 200)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    assert decode(buf.getvalue())[0][0, 0, 0] == 10
    frames = [Image.new("P", (2, 2), i) for i in (1, 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 50, 50, 50, 250, 250, 250] + [0] * 759)
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert decode(buf.getvalue())[0][0, 0].tolist() == [50, 50, 50]


def test_dicom_rescale_and_window():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 3, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000  # stored 500, 600, 700 -> 0, 200, 400 (HU)
    ds.WindowCenter, ds.WindowWidth = 200, 400  # window 0..400
    ds.PixelData = np.array([[500, 600, 700]], dtype=np.uint16).tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    rgb, err = decode(buf.getvalue())
    assert err is None and rgb[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file (0 bytes)"),
    (b"%PDF-1.4 not a picture", "not an image (format not recognised)"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),  # a PNG signature and garbage
])
def test_bad_files_name_their_cause(data, reason):
    rgb, err = decode(data)
    assert rgb is None and err.startswith(reason) and "\n" not in err


def test_truncated_jpeg_is_an_error_row():
    good = png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)), "JPEG")
    rgb, err = decode(good[:200])
    assert rgb is None and err.startswith("corrupt image")


def test_bomb_header_is_refused_without_allocating():
    # A real 20000x20000 PNG header over a tiny body: decoding it would need 400 MP.
    bomb = png(Image.new("1", (20000, 20000)))
    rgb, err = decode(bomb, options=DecodeOptions(max_pixels=1_000_000))
    assert rgb is None and "20000x20000 = 400000000 pixels > limit 1000000" in err


def test_pad_keeps_aspect_and_heatmap_upsampling_undoes_it():
    image = np.full((10, 40, 3), 255, dtype=np.uint8)  # 4:1 landscape
    assert content_box(10, 40, 64, "pad") == (24, 0, 16, 64)
    x = preprocess([image], 64, "pad")
    white = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(x[0, :, 30, 5], white, atol=1e-5)  # inside the content box
    assert torch.allclose(x[0, :, 2, 5], torch.zeros(3))  # padding: the mean, zero after normalisation
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[1:3, :] = 1.0  # grid rows 1-2 are the image's rows (pixels 16..48 of 64, content 24..40)
    up = upsample(heat, 10, 40, "pad")
    assert up.shape == (10, 40) and up.min() > 0.99


def test_postscript_is_never_handed_to_ghostscript_but_other_rasters_decode():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    assert decode(eps) == (None, "not an image (format not recognised)")
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (10, 20, 30)).save(buf, "TGA")
    image, reason = decode(buf.getvalue())
    assert reason is None and image.shape == (10, 20, 3) and tuple(image[0, 0]) == (10, 20, 30)
