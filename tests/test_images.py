"""Tests for pipeline.images: decoding, mode conversion, resizing, errors."""

from __future__ import annotations

import io
import struct
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, UnidentifiedImageError

from pipeline import image_headers, images
from pipeline.images import (
    DECODE_ERRORS,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    INTERPOLATIONS,
    RESIZE_POLICIES,
    DecodeSpec,
    decode_image,
    is_image_name,
    open_rgb,
    resize_image,
)

# Any warning (Pillow's DecompressionBombWarning, palette warnings...) is a
# failure: decoding must be silent per image.
pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture(autouse=True)
def pillow_global_restored(monkeypatch):
    """A decode may loosen Pillow's process-wide limit: each test starts from Pillow's own."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS)

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def smooth(width: int, height: int) -> Image.Image:
    """A low-frequency image: resampling methods agree on it closely."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 100 * np.sin(x / width * 2 * np.pi)
    g = 128 + 100 * np.cos(y / height * 2 * np.pi)
    b = 255 * (x + y) / (width + height)
    return Image.fromarray(np.stack([r, g, b], -1).round().astype(np.uint8), "RGB")


def own_size(img_or_size) -> DecodeSpec:
    """Spec whose target equals the image size: no resize, exact values."""
    w, h = img_or_size if isinstance(img_or_size, tuple) else img_or_size.size
    return DecodeSpec(height=h, width=w, interpolation="nearest")


def png_header(width: int, height: int) -> bytes:
    """A PNG that only declares its size (no pixel data): a cheap 'bomb'."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def decode_own(data: bytes, size: tuple[int, int]) -> np.ndarray:
    array, original = decode_image(data, own_size(size))
    assert original == size
    assert array.shape == (size[1], size[0], 3) and array.dtype == np.uint8
    return array


# --------------------------------------------------------------------------- spec / names


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(height=0, width=4),
        dict(height=4, width=-1),
        dict(height=4.0, width=4),
        dict(height=4, width=4, resize="stretch"),
        dict(height=4, width=4, interpolation="area"),
        dict(height=4, width=4, max_pixels=0),
    ],
)
def test_spec_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        DecodeSpec(**kwargs)


def test_spec_defaults():
    spec = DecodeSpec(height=3, width=5)
    assert (spec.resize, spec.interpolation) == ("squash", "bilinear")
    assert spec.max_pixels == DEFAULT_MAX_PIXELS == 89_478_485
    assert spec.jpeg_draft and spec.exif_transpose
    assert set(RESIZE_POLICIES) == {"squash", "center-crop", "pad"}
    assert set(INTERPOLATIONS) == {"nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.jpg", True),
        ("A.JPG", True),
        ("dir/sub/x.JpEg", True),
        ("a.b.c.png", True),
        ("weird.name.v2.TIFF", True),
        ("dir\\x.png", True),
        ("x.jfif", True),
        ("x.jpe", True),
        ("x.webp", True),
        ("x.pnm", True),
        ("x.pbm", True),
        ("photo.jpg.txt", False),
        ("archive.tar.gz", False),
        ("noext", False),
        ("dir.jpg/file", False),
        (".jpg", False),  # hidden file without extension, as os.path.splitext says
        ("x.json", False),
        ("", False),
    ],
)
def test_is_image_name(name, expected):
    assert is_image_name(name) is expected


def test_image_extensions_are_lowercase_with_dot():
    assert all(ext.startswith(".") and ext == ext.lower() for ext in IMAGE_EXTENSIONS)
    assert {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm"} <= IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- modes


def test_rgb_png_exact():
    img = noise(7, 5, seed=1)
    assert np.array_equal(decode_own(encode(img, "PNG"), (7, 5)), np.asarray(img))


def test_grayscale_l_replicated_to_three_channels():
    img = noise(6, 4, seed=2, mode="L")
    out = decode_own(encode(img, "PNG"), (6, 4))
    for c in range(3):
        assert np.array_equal(out[..., c], np.asarray(img))


def test_bilevel_mode_1():
    bits = np.zeros((4, 8), dtype=bool)
    bits[:, 4:] = True
    img = Image.fromarray(bits).convert("1")
    assert img.mode == "1"
    out = decode_own(encode(img, "PNG"), (8, 4))
    assert (out[:, :4] == 0).all() and (out[:, 4:] == 255).all()


def test_rgba_transparent_becomes_white():
    img = Image.new("RGBA", (4, 2), (10, 20, 30, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    img.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black
    out = decode_own(encode(img, "PNG"), (4, 2))
    assert tuple(out[0, 0]) == WHITE
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 1])
    assert tuple(out[1, 3]) == (10, 20, 30)


def test_la_transparent_becomes_white():
    img = Image.new("LA", (3, 1), (50, 255))
    img.putpixel((2, 0), (0, 0))
    out = decode_own(encode(img, "PNG"), (3, 1))
    assert tuple(out[0, 0]) == (50, 50, 50)
    assert tuple(out[0, 2]) == WHITE


def test_palette_without_transparency():
    img = Image.new("P", (4, 1))
    img.putpalette([*RED, *GREEN, *BLUE] + [0] * (253 * 3))
    img.putdata([0, 1, 2, 1])
    out = decode_own(encode(img, "PNG"), (4, 1))
    assert [tuple(p) for p in out[0]] == [RED, GREEN, BLUE, GREEN]


def test_palette_with_transparency():
    img = Image.new("P", (3, 1))
    img.putpalette([*BLACK, *RED, *BLUE] + [0] * (253 * 3))
    img.putdata([0, 1, 2])
    data = encode(img, "PNG", transparency=0)  # index 0 (black) is transparent
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 0
    out = decode_own(data, (3, 1))
    assert [tuple(p) for p in out[0]] == [WHITE, RED, BLUE]


@pytest.mark.parametrize(
    "cmyk, rgb",
    [((255, 0, 0, 0), (0, 255, 255)), ((0, 255, 0, 0), (255, 0, 255)), ((0, 0, 255, 0), (255, 255, 0)),
     ((0, 0, 0, 255), BLACK), ((0, 0, 0, 0), WHITE)],
)  # fmt: skip
def test_cmyk_pure_colours(cmyk, rgb):
    img = Image.new("CMYK", (16, 16), cmyk)
    assert tuple(decode_own(encode(img, "TIFF"), (16, 16))[8, 8]) == rgb  # lossless: exact
    jpeg = encode(img, "JPEG", quality=95)
    assert Image.open(io.BytesIO(jpeg)).mode == "CMYK"
    got = decode_own(jpeg, (16, 16))[8, 8]
    assert np.abs(got.astype(int) - rgb).max() <= 8, got


def test_ycbcr_mode():
    # No input format yields a YCbCr image through open() (libtiff and
    # libjpeg hand back RGB), so the conversion helper is tested directly.
    from pipeline.images import _to_rgb

    img = Image.new("YCbCr", (4, 4), (76, 85, 255))  # ~ pure red
    got = np.asarray(_to_rgb(img))
    assert got.shape == (4, 4, 3)
    assert tuple(got[0, 0]) == img.convert("RGB").getpixel((0, 0))
    assert got[0, 0, 0] > 240 and got[0, 0, 1] < 15 and got[0, 0, 2] < 15


SIXTEEN_BIT = np.array([[0, 255, 32768, 65535]], dtype=np.uint16)
SIXTEEN_BIT_AS_8 = [0, 0, 128, 255]  # top byte, not clipped at 255


@pytest.mark.parametrize("fmt, mode", [("PNG", "I;16"), ("TIFF", "I;16"), ("TIFF", "I;16B")])
def test_sixteen_bit_scaled_not_clipped(fmt, mode):
    img = Image.frombytes(mode, (4, 1), SIXTEEN_BIT.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    data = encode(img, fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = decode_own(data, (4, 1))
    assert out[0, :, 0].tolist() == SIXTEEN_BIT_AS_8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_sixteen_bit_pgm_is_mode_i():
    data = b"P5 4 1 65535\n" + SIXTEEN_BIT.astype(">u2").tobytes()
    assert Image.open(io.BytesIO(data)).mode == "I"  # Pillow keeps 16-bit PGM in I
    assert decode_own(data, (4, 1))[0, :, 0].tolist() == SIXTEEN_BIT_AS_8


def test_thirty_two_bit_int_clipped_to_sixteen_then_scaled():
    img = Image.fromarray(np.array([[0, -5, 200 * 256, 70_000]], dtype=np.int32))
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert decode_own(data, (4, 1))[0, :, 0].tolist() == [0, 0, 200, 255]


def test_float_clipped_to_0_255():
    img = Image.fromarray(np.array([[0.0, 1.0, 127.6, 300.0, -3.5]], dtype=np.float32))
    data = encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    assert decode_own(data, (5, 1))[0, :, 0].tolist() == [0, 1, 128, 255, 0]


@pytest.mark.parametrize("fmt", ["BMP", "WEBP", "TIFF", "PPM", "GIF"])
def test_other_formats(fmt):
    img = Image.new("RGB", (6, 3), RED)
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_own(encode(img, fmt, **kw), (6, 3))
    assert (out == RED).all()


def test_format_outside_allow_list_is_rejected():
    # TGA decodes fine in Pillow but is not an input format of the pipeline.
    with pytest.raises(UnidentifiedImageError):
        decode_image(encode(Image.new("RGB", (4, 4), RED), "TGA"), DecodeSpec(4, 4))


def test_output_array_is_contiguous_and_writable():
    array, _ = decode_image(encode(noise(9, 9, seed=3), "PNG"), DecodeSpec(4, 6))
    assert array.flags.c_contiguous and array.flags.writeable
    assert array.shape == (4, 6, 3) and array.dtype == np.uint8


# --------------------------------------------------------------------------- frames and EXIF


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_first_frame(fmt):
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)
    with Image.open(io.BytesIO(data)) as check:
        assert getattr(check, "n_frames", 1) == 2
    out = decode_own(data, (8, 8))
    assert (out == RED).all()


def exif_jpeg(orientation: int | None, stored=(40, 20)) -> bytes:
    """Blue JPEG with a red block at the STORED top-left corner."""
    img = Image.new("RGB", stored, BLUE)
    img.paste(RED, (0, 0, 8, 8))
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    return encode(img, "JPEG", quality=95, **kw)


def is_red(pixel) -> bool:
    return pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


@pytest.mark.parametrize(
    "orientation, red_corner",
    [(None, "top-left"), (1, "top-left"), (6, "top-right"), (8, "bottom-left"), (3, "bottom-right")],
)
def test_exif_orientation(orientation, red_corner):
    data = exif_jpeg(orientation)
    swapped = orientation in (6, 8)
    size = (20, 40) if swapped else (40, 20)
    out = decode_own(data, size)
    h, w = out.shape[:2]
    corners = {"top-left": out[2, 2], "top-right": out[2, w - 3], "bottom-left": out[h - 3, 2],
               "bottom-right": out[h - 3, w - 3]}  # fmt: skip
    assert [name for name, px in corners.items() if is_red(px)] == [red_corner]


def test_exif_transpose_can_be_disabled():
    spec = DecodeSpec(height=20, width=40, interpolation="nearest", exif_transpose=False)
    out, original = decode_image(exif_jpeg(6), spec)
    assert original == (40, 20)
    assert is_red(out[2, 2])


def test_exif_orientation_in_png():
    img = Image.new("RGB", (6, 4), BLUE)
    img.putpixel((0, 0), RED)
    exif = Image.Exif()
    exif[0x0112] = 8
    out, original = decode_image(encode(img, "PNG", exif=exif), DecodeSpec(6, 4, interpolation="nearest"))
    assert original == (4, 6)
    assert tuple(out[5, 0]) == RED  # orientation 8: stored top-left -> bottom-left


# --------------------------------------------------------------------------- JPEG draft


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("policy", RESIZE_POLICIES)
def test_jpeg_draft_close_to_full_decode(policy):
    data = encode(smooth(256, 160), "JPEG", quality=95)
    spec = DecodeSpec(height=24, width=32, resize=policy, interpolation="bilinear")
    drafted_img, original = open_rgb(data, spec)
    assert original == (256, 160)  # the real size, not the draft size
    assert drafted_img.size[0] < 256  # the draft did shrink the decode...
    needed = (32, 20) if policy == "pad" else (32, 24)
    assert drafted_img.size[0] >= needed[0] and drafted_img.size[1] >= needed[1]  # ...but not too far

    full_img, _ = open_rgb(data, DecodeSpec(24, 32, policy, "bilinear", jpeg_draft=False))
    assert full_img.size == (256, 160)

    drafted, _ = decode_image(data, spec)
    full, _ = decode_image(data, DecodeSpec(24, 32, policy, "bilinear", jpeg_draft=False))
    assert drafted.shape == full.shape == (24, 32, 3)
    assert mean_abs_diff(drafted, full) < 3.0


def test_jpeg_draft_not_used_for_nearest():
    data = encode(smooth(256, 160), "JPEG")
    img, _ = open_rgb(data, DecodeSpec(height=24, width=32, interpolation="nearest"))
    assert img.size == (256, 160)


def test_jpeg_draft_for_panorama_pad_uses_fitted_size():
    data = encode(smooth(800, 50), "JPEG", quality=95)
    spec = DecodeSpec(height=32, width=32, resize="pad")  # fitted size is 32x2
    img, _ = open_rgb(data, spec)
    assert img.size == (100, 7)  # 1/8 scale, still >= 32x2
    drafted, _ = decode_image(data, spec)
    full, _ = decode_image(data, DecodeSpec(32, 32, "pad", jpeg_draft=False))
    assert mean_abs_diff(drafted, full) < 3.0


@pytest.mark.parametrize("policy", RESIZE_POLICIES)
def test_jpeg_draft_respects_exif_rotation(policy):
    # Stored 256x128, shown 128x256; the target is portrait 16x32.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(smooth(256, 128), "JPEG", quality=95, exif=exif)
    spec = DecodeSpec(height=32, width=16, resize=policy)
    img, original = open_rgb(data, spec)
    assert original == (128, 256)
    assert img.size == (16, 32)  # 1/8 draft in stored axes (32x16), then rotated
    drafted, _ = decode_image(data, spec)
    full, _ = decode_image(data, DecodeSpec(32, 16, policy, jpeg_draft=False))
    assert drafted.shape == full.shape == (32, 16, 3)
    assert mean_abs_diff(drafted, full) < 3.0


# --------------------------------------------------------------------------- Keras parity


@pytest.fixture(scope="module")
def keras_utils():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TensorFlow's import-time chatter is not ours
        keras = pytest.importorskip("keras")
    return keras.utils


PARITY_INPUTS = {
    "rgb.jpg": lambda: encode(noise(37, 23, seed=10), "JPEG"),
    "rgb.png": lambda: encode(noise(37, 23, seed=11), "PNG"),
    "gray.jpg": lambda: encode(noise(23, 37, seed=12, mode="L"), "JPEG"),
    "gray.png": lambda: encode(noise(23, 37, seed=13, mode="L"), "PNG"),
}


@pytest.mark.parametrize("name", sorted(PARITY_INPUTS))
@pytest.mark.parametrize(
    "policy, interpolation, keep_aspect_ratio",
    [("squash", "nearest", False), ("center-crop", "nearest", True), ("squash", "bilinear", False),
     ("center-crop", "bicubic", True)],
)  # fmt: skip
@pytest.mark.parametrize("target", [(16, 20), (40, 9), (23, 37)])  # (h, w); last: no-op for rgb
def test_keras_parity(keras_utils, tmp_path, name, policy, interpolation, keep_aspect_ratio, target):
    data = PARITY_INPUTS[name]()
    path = tmp_path / name
    path.write_bytes(data)
    expected = keras_utils.img_to_array(
        keras_utils.load_img(path, target_size=target, interpolation=interpolation, keep_aspect_ratio=keep_aspect_ratio)
    )
    # Keras never drafts: parity for non-nearest needs jpeg_draft=False.
    spec = DecodeSpec(height=target[0], width=target[1], resize=policy, interpolation=interpolation, jpeg_draft=False)
    got, _ = decode_image(data, spec)
    assert got.shape == expected.shape
    assert np.array_equal(got.astype(np.float32), expected)


def test_keras_parity_nearest_with_draft_enabled(keras_utils, tmp_path):
    # The default spec keeps draft on; nearest must still match Keras.
    data = encode(noise(300, 200, seed=14), "JPEG")
    path = tmp_path / "big.jpg"
    path.write_bytes(data)
    expected = keras_utils.img_to_array(keras_utils.load_img(path, target_size=(24, 32)))
    got, _ = decode_image(data, DecodeSpec(height=24, width=32, interpolation="nearest"))
    assert np.array_equal(got.astype(np.float32), expected)


# --------------------------------------------------------------------------- resize policies


def test_pad_landscape_bars_top_and_bottom():
    out, _ = decode_image(encode(Image.new("RGB", (40, 20), RED), "PNG"), DecodeSpec(20, 20, "pad", "nearest"))
    assert (out[:5] == 0).all() and (out[15:] == 0).all()
    assert (out[5:15] == RED).all()


def test_pad_portrait_bars_left_and_right():
    out, _ = decode_image(encode(Image.new("RGB", (10, 40), RED), "PNG"), DecodeSpec(20, 20, "pad", "nearest"))
    assert (out[:, :7] == 0).all() and (out[:, 12:] == 0).all()  # 5 px wide, centred at x=7
    assert (out[:, 7:12] == RED).all()


def test_pad_same_aspect_has_no_bars():
    out, _ = decode_image(encode(Image.new("RGB", (40, 20), RED), "PNG"), DecodeSpec(10, 20, "pad", "bilinear"))
    assert (out == RED).all()


def test_center_crop_keeps_centre():
    img = Image.new("RGB", (30, 10), BLUE)
    img.paste(RED, (10, 0, 20, 10))  # the central square
    out, _ = decode_image(encode(img, "PNG"), DecodeSpec(5, 5, "center-crop", "nearest"))
    assert (out == RED).all()


def test_squash_stretches_everything_in():
    img = Image.new("RGB", (30, 10), BLUE)
    img.paste(RED, (0, 0, 15, 10))
    out, _ = decode_image(encode(img, "PNG"), DecodeSpec(6, 6, "squash", "nearest"))
    assert (out[:, :3] == RED).all() and (out[:, 3:] == BLUE).all()


def test_resize_image_is_noop_at_target_size():
    img = noise(8, 6, seed=4)
    assert resize_image(img, DecodeSpec(6, 8, "center-crop", "lanczos")) is img


@pytest.mark.parametrize("policy", RESIZE_POLICIES)
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "lanczos"])
@pytest.mark.parametrize(
    "size, fmt", [((1, 1), "PNG"), ((4000, 10), "PNG"), ((4000, 10), "JPEG"), ((10, 4000), "JPEG")]
)
def test_extreme_shapes_every_policy(policy, interpolation, size, fmt):
    data = encode(Image.new("RGB", size, RED), fmt)
    out, original = decode_image(data, DecodeSpec(height=6, width=8, resize=policy, interpolation=interpolation))
    assert original == size
    assert out.shape == (6, 8, 3)
    red = (out[..., 0] > 200) & (out[..., 1] < 60) & (out[..., 2] < 60)
    black = (out == 0).all(-1)
    assert red.any()
    if policy == "pad":
        assert (red | black).all() and black.any()  # image + bars, nothing else
    else:
        assert red.all()


def test_pad_of_single_pixel():
    out, _ = decode_image(encode(Image.new("RGB", (1, 1), RED), "PNG"), DecodeSpec(6, 8, "pad", "nearest"))
    assert (out[:, 1:7] == RED).all() and (out[:, [0, 7]] == 0).all()


# --------------------------------------------------------------------------- errors


def test_empty_bytes():
    with pytest.raises(ValueError, match="empty file"):
        decode_image(b"", DecodeSpec(4, 4))


def test_broken_png_chunk_is_a_decode_error():
    data = bytearray(encode(noise(24, 16, seed=6), "PNG"))
    data[33:37] = struct.pack(">I", struct.unpack(">I", data[33:37])[0] - 8)  # IDAT length 8 short
    with pytest.raises(SyntaxError, match="broken PNG file"):  # Pillow's own type for it
        decode_image(bytes(data), DecodeSpec(4, 4))
    assert SyntaxError in DECODE_ERRORS


def test_text_bytes():
    with pytest.raises(UnidentifiedImageError):
        decode_image(b"this is not an image\n" * 10, DecodeSpec(4, 4))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt):
    data = encode(noise(64, 64, seed=5), fmt)
    with pytest.raises(OSError):
        decode_image(data[: len(data) // 2], DecodeSpec(4, 4))


def test_bomb_over_configured_limit():
    data = encode(Image.new("L", (3000, 3000), 7), "PNG")  # 9 Mpx, ~9 KB
    with pytest.raises(Image.DecompressionBombError, match=r"3000x3000.*1000000"):
        decode_image(data, DecodeSpec(4, 4, max_pixels=1_000_000))
    out, original = decode_image(data, DecodeSpec(4, 4, max_pixels=None))
    assert original == (3000, 3000) and (out == 7).all()
    assert decode_image(data, DecodeSpec(4, 4, max_pixels=9_000_000))[1] == (3000, 3000)  # limit is inclusive


@pytest.mark.parametrize("side", [10_000, 20_000])  # 1.1x and 4.5x Pillow's default limit
def test_bomb_default_limit_raises_at_1x_without_warning(side):
    # Pillow alone would only warn at 10_000^2 (below 2x its limit): we raise,
    # with our message, and no DecompressionBombWarning (warnings are errors).
    with pytest.raises(Image.DecompressionBombError, match=f"{side}x{side}"):
        decode_image(png_header(side, side), DecodeSpec(4, 4))
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS  # restored


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "TIFF"])  # TIFF: Pillow checks again at load
@pytest.mark.parametrize("max_pixels", [1_000_000, None])
def test_limit_looser_than_pillow_global_is_honoured(monkeypatch, fmt, max_pixels):
    # Pillow's own check (open time, and GIF frame checks) must follow our
    # limit: with its global at 100k, 600x600 would raise inside Pillow.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    data = encode(Image.new("RGB", (600, 600), RED), fmt)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))  # sanity: Pillow alone refuses
    out, original = decode_image(data, DecodeSpec(4, 4, max_pixels=max_pixels))
    assert original == (600, 600) and (out == RED).all()
    assert Image.MAX_IMAGE_PIXELS == max_pixels  # loosened through Pillow's public setting


def test_no_pillow_function_is_replaced():
    # Pillow 13 changed a private function's signature and broke every WebP
    # while featurize replaced it: featurize only sets the public global.
    import PIL.Image

    assert images.Image is PIL.Image
    assert PIL.Image._decompression_bomb_check.__module__ == "PIL.Image"
    for name, value in vars(PIL.Image).items():
        assert getattr(value, "__module__", "PIL").split(".")[0] != "pipeline", name


def test_stricter_spec_never_tightens_the_global():
    decode_image(encode(Image.new("RGB", (8, 8), RED), "PNG"), DecodeSpec(4, 4, max_pixels=100))
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


def test_limit_stricter_than_pillow_global():
    data = encode(Image.new("RGB", (101, 100), RED), "PNG")
    with pytest.raises(Image.DecompressionBombError):
        decode_image(data, DecodeSpec(4, 4, max_pixels=10_000))
    assert decode_image(data, DecodeSpec(4, 4, max_pixels=10_100))[1] == (101, 100)


def test_extension_is_irrelevant(tmp_path):
    path = tmp_path / "actually_png.jpg"
    path.write_bytes(encode(Image.new("RGB", (3, 2), GREEN), "PNG"))
    out, original = decode_image(path.read_bytes(), DecodeSpec(2, 3, interpolation="nearest"))
    assert original == (3, 2) and (out == GREEN).all()


# --------------------------------------------------------------------------- pixel limit, threads


def test_threads_keep_their_own_limit_and_the_global_only_loosens():
    # Two threads decode the same 600x600 image at once, many times: under
    # max_pixels=None it must decode, under 100_000 it must be refused, every
    # time; Pillow's process-global limit only ever moves to the looser None.
    data = encode(Image.new("L", (600, 600), 7), "PNG")
    pillow_global = Image.MAX_IMAGE_PIXELS
    start, stop = threading.Barrier(3), threading.Event()
    seen_globals = set()

    def decode_many(max_pixels: int | None) -> int:
        start.wait()
        accepted = 0
        for _ in range(200):
            try:
                decode_image(data, DecodeSpec(4, 4, max_pixels=max_pixels))
                accepted += 1
            except Image.DecompressionBombError:
                pass
        return accepted

    def watch_global() -> None:
        start.wait()
        while not stop.is_set():
            seen_globals.add(Image.MAX_IMAGE_PIXELS)

    watcher = threading.Thread(target=watch_global)
    watcher.start()
    try:
        with ThreadPoolExecutor(2) as pool:
            unlimited, limited = pool.submit(decode_many, None), pool.submit(decode_many, 100_000)
            assert (unlimited.result(), limited.result()) == (200, 0)
    finally:
        stop.set()
        watcher.join()
    assert seen_globals <= {pillow_global, None} and Image.MAX_IMAGE_PIXELS is None


def test_decodes_are_not_serialised(monkeypatch):
    # Thread A (max_pixels=None, a config the old per-image lock serialised)
    # parks mid-decode until thread B has finished whole decodes under its own
    # limit: any lock held across a decode would make B wait forever.
    big, small = encode(Image.new("L", (600, 600), 7), "PNG"), encode(Image.new("L", (300, 300), 7), "PNG")
    a_inside, b_done = threading.Event(), threading.Event()
    parked = threading.local()
    to_rgb = images._to_rgb

    def park_in_a(img: Image.Image) -> Image.Image:
        if getattr(parked, "yes", False):
            a_inside.set()
            assert b_done.wait(30), "thread B never finished while A was decoding"
        return to_rgb(img)

    def run_a() -> tuple[int, int]:
        parked.yes = True
        return decode_image(big, DecodeSpec(4, 4, max_pixels=None))[1]

    def run_b() -> tuple[int, int]:
        with pytest.raises(Image.DecompressionBombError):  # A's None does not leak into B
            decode_image(big, DecodeSpec(4, 4, max_pixels=100_000))
        return decode_image(small, DecodeSpec(4, 4, max_pixels=100_000))[1]

    monkeypatch.setattr(images, "_to_rgb", park_in_a)
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(run_a)
        assert a_inside.wait(30)
        b = pool.submit(run_b)
        assert b.result(timeout=30) == (300, 300)
        b_done.set()
        assert a.result(timeout=30) == (600, 600)  # and B's limit did not leak into A


def gif_with_frame(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    """A red 20x10 GIF (disposal 2) whose header says ``screen`` and its frame ``frame``."""
    data = bytearray(encode(Image.new("RGB", (20, 10), RED), "GIF", disposal=2))
    descriptor = data.index(b"!\xf9\x04") + 8  # the image descriptor follows the graphic control block
    assert data[descriptor] == ord(",")
    data[6:10] = struct.pack("<HH", *screen)
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", *frame)
    return bytes(data)


@pytest.mark.parametrize("pillow_global", [DEFAULT_MAX_PIXELS, None])
def test_gif_frame_bomb_refused_before_image_open(monkeypatch, pillow_global):
    # Pillow allocates a GIF's first frame (and its disposal buffer) inside
    # Image.open, sized by the frame, not the 16x16 header: the spec's limit
    # applies before that allocation (Pillow's default would let 25 Mpx through,
    # and a looser spec elsewhere in the process may have lifted its limit).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_global)
    data = gif_with_frame((16, 16), (5_000, 5_000))
    with pytest.raises(Image.DecompressionBombError, match="5000x5000") as raised:
        decode_image(data, DecodeSpec(4, 4, max_pixels=1_000_000))
    assert not any(entry.path.name == "GifImagePlugin.py" for entry in raised.traceback)
    out, original = decode_image(gif_with_frame((16, 16), (20, 10)), DecodeSpec(4, 4, max_pixels=320))
    assert original == (20, 16) and out.shape == (4, 4, 3)  # the frame widens the image: 320 pixels, inclusive
    with pytest.raises(Image.DecompressionBombError, match="20x16"):
        decode_image(gif_with_frame((16, 16), (20, 10)), DecodeSpec(4, 4, max_pixels=319))


@pytest.mark.parametrize("kw", [dict(quality=80), dict(lossless=True), dict(quality=80, exif=b"Exif\x00\x00II*\x00")])
def test_webp_canvas_read_from_header(kw):
    data = encode(noise(37, 23, seed=7), "WEBP", **kw)  # VP8, VP8L, VP8X
    assert image_headers._webp_canvas(data) == (37, 23)


def test_webp_bomb_refused_before_image_open():
    # libwebp allocates canvas-sized buffers inside Image.open, unchecked by
    # Pillow: a forged VP8X canvas is refused before Pillow sees the file.
    forged = bytearray(encode(noise(37, 23, seed=7), "WEBP", quality=80, exif=b"Exif\x00\x00II*\x00"))
    forged[24:30] = (16_383).to_bytes(3, "little") * 2
    with pytest.raises(Image.DecompressionBombError, match="16384x16384") as raised:
        decode_image(bytes(forged), DecodeSpec(4, 4, max_pixels=1_000_000))
    assert not any(entry.path.name == "WebPImagePlugin.py" for entry in raised.traceback)


# --------------------------------------------------------------------------- property: mutated real images
#
# decode_image is total over untrusted bytes: for any input it returns exactly
# the spec's (H, W, 3) uint8 array or raises one of DECODE_ERRORS (the pipeline
# turns exactly those into error rows; anything else would fail the job), fast,
# and without allocating more than spec.max_pixels allows.


def _tiny_sources() -> dict[str, bytes]:
    """One small real file per accepted format and per interesting variant."""
    rgb = noise(24, 16, seed=20)
    rotated = Image.Exif()
    rotated[0x0112] = 6
    palette = Image.new("P", (16, 12))
    palette.putpalette([*BLACK, *RED, *GREEN, *BLUE] * 64)
    palette.putdata([i % 4 for i in range(16 * 12)])
    sixteen = Image.fromarray((np.arange(16 * 12, dtype=np.uint16) * 300).reshape(12, 16))
    frames = [noise(16, 12, seed=s).convert("P") for s in (21, 22)]
    # Two 1000x1000 ones (a few KB, exactly the largest limit below) make the
    # memory bound bite on real full-size decodes, not only on refused bombs.
    big_sixteen = Image.fromarray(np.tile(np.arange(1000, dtype=np.uint16) * 60, (1000, 1)))
    big_palette = palette.resize((1000, 1000), Image.Resampling.NEAREST)
    return {
        "jpeg": encode(rgb, "JPEG", quality=90),
        "jpeg-progressive-exif": encode(rgb, "JPEG", quality=90, progressive=True, exif=rotated),
        "png": encode(rgb, "PNG"),
        "png-16bit": encode(sixteen, "PNG"),
        "png-palette-transparency": encode(palette, "PNG", transparency=0),
        "png-16bit-1mpx": encode(big_sixteen, "PNG"),
        "png-palette-transparency-1mpx": encode(big_palette, "PNG", transparency=0),
        "gif-animated": encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, disposal=2),
        "bmp": encode(rgb, "BMP"),
        "webp": encode(rgb, "WEBP", quality=80),
        "webp-alpha-exif": encode(rgb.convert("RGBA"), "WEBP", quality=80, exif=rotated),  # VP8X container
        "tiff": encode(rgb, "TIFF", compression="tiff_lzw"),
        "ppm": encode(rgb, "PPM"),
    }


SOURCES = _tiny_sources()

Field = tuple[int, int, str]  # (offset, size in bytes, byte order) of a width or height in a header


def _jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each marker segment from SOI up to and including the SOS header."""
    segments, pos = [], 2
    while True:
        end = pos + 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        segments.append((pos, end))
        if data[pos + 1] == 0xDA:  # SOS: entropy-coded data follows
            return segments
        pos = end


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    chunks, pos = [], 8
    while pos < len(data):
        end = pos + 12 + struct.unpack(">I", data[pos : pos + 4])[0]
        chunks.append((pos, end))
        pos = end
    return chunks


def _size_fields(name: str, data: bytes) -> list[tuple[Field, Field]]:
    """(width, height) header fields of ``data``; every pair is a place to forge a size."""
    if name.startswith("png"):
        return [((16, 4, "big"), (20, 4, "big"))]
    if name.startswith("jpeg"):
        # SOF0..SOF15 except DHT/JPG/DAC: precision, height, width.
        (sof, _), = [(s, e) for s, e in _jpeg_segments(data) if data[s + 1] in (0xC0, 0xC1, 0xC2)]
        return [((sof + 7, 2, "big"), (sof + 5, 2, "big"))]
    if name.startswith("gif"):
        descriptor = data.index(b"!\xf9\x04") + 8  # first frame, after its graphic control block
        return [((6, 2, "little"), (8, 2, "little")), ((descriptor + 5, 2, "little"), (descriptor + 7, 2, "little"))]
    if name == "bmp":
        return [((18, 4, "little"), (22, 4, "little"))]
    if name == "tiff":
        ifd = struct.unpack("<I", data[4:8])[0]
        count = struct.unpack("<H", data[ifd : ifd + 2])[0]
        fields = {}
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag, kind = struct.unpack("<HH", data[entry : entry + 4])
            fields[tag] = (entry + 8, 2 if kind == 3 else 4, "little")  # SHORT or LONG
        return [(fields[256], fields[257])]
    if name.startswith("webp"):
        pairs, pos = [], 12
        while pos < len(data):
            kind, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
            if kind == b"VP8X":  # canvas size minus one, 24 bits each
                pairs.append(((pos + 12, 3, "little"), (pos + 15, 3, "little")))
            elif kind == b"VP8 ":  # key frame: tag, start code, then 14-bit sizes
                pairs.append(((pos + 14, 2, "little"), (pos + 16, 2, "little")))
            pos += 8 + size + size % 2
        return pairs
    return []  # ppm: its size is text, forged by _forge_size


SIZE_FIELDS = {name: _size_fields(name, data) for name, data in SOURCES.items()}
SEGMENTS = {
    name: _png_chunks(data) if name.startswith("png") else _jpeg_segments(data) if name.startswith("jpeg") else []
    for name, data in SOURCES.items()
}
# Sizes around the usual limits and field widths, plus anything.
FORGED_SIZES = st.one_of(
    st.sampled_from([0, 1, 255, 256, 1_000, 1_001, 4_096, 65_535, 65_536, 2**24 - 1, 2**31 - 1, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)


def _forge_size(draw, name: str, data: bytes) -> bytes:
    width, height = draw(FORGED_SIZES), draw(FORGED_SIZES)
    if name == "ppm":
        header = b"P6\n24 16\n255\n"
        assert data.startswith(header)
        return b"P6\n%d %d\n255\n" % (width, height) + data[len(header) :]
    forged = bytearray(data)
    for (offset, size, order), value in zip(draw(st.sampled_from(SIZE_FIELDS[name])), (width, height)):
        forged[offset : offset + size] = (value % 256**size).to_bytes(size, order)
    if name.startswith("png") and draw(st.booleans()):
        # With its CRC recomputed the forged IHDR gets past Pillow's CRC check.
        forged[29:33] = struct.pack(">I", zlib.crc32(forged[12:29]))
    return bytes(forged)


def _repeat_segment(draw, name: str, data: bytes) -> bytes:
    """A PNG chunk or JPEG segment (any byte range elsewhere) repeated 1-4 more times in place."""
    if SEGMENTS[name]:
        start, end = draw(st.sampled_from(SEGMENTS[name]))
    else:
        start = draw(st.integers(0, len(data) - 1))
        end = min(len(data), start + draw(st.integers(1, 256)))
    return data[:end] + data[start:end] * draw(st.integers(1, 4)) + data[end:]


def _flip_bits(draw, data: bytes) -> bytes:
    flipped = bytearray(data)
    # Headers hold most of the structure: half the flips land in the first 64 bytes.
    position = st.one_of(st.integers(0, min(63, len(data) - 1)), st.integers(0, len(data) - 1))
    for index, bit in draw(st.lists(st.tuples(position, st.integers(0, 7)), min_size=1, max_size=8)):
        flipped[index] ^= 1 << bit
    return bytes(flipped)


BYTE_MUTATIONS = {
    "flip-bits": _flip_bits,
    "truncate": lambda draw, data: data[: draw(st.integers(0, len(data) - 1))],
    "append-garbage": lambda draw, data: data + draw(st.binary(min_size=1, max_size=64)),
    "prepend-garbage": lambda draw, data: draw(st.binary(min_size=1, max_size=64)) + data,
}


@st.composite
def mutated_images(draw) -> bytes:
    """A real tiny image with at most one structural and up to two byte-level mutations."""
    name = draw(st.sampled_from(sorted(SOURCES)))
    data = SOURCES[name]
    structural = draw(st.sampled_from(["none", "forge-size", "repeat-segment"]))
    if structural == "forge-size":
        data = _forge_size(draw, name, data)
    elif structural == "repeat-segment":
        data = _repeat_segment(draw, name, data)
    kinds = draw(st.lists(st.sampled_from(sorted(BYTE_MUTATIONS)), min_size=int(structural == "none"), max_size=2))
    for kind in kinds:
        if data:  # a truncation may have left nothing to mutate
            data = BYTE_MUTATIONS[kind](draw, data)
    return data


PROPERTY_SPECS = st.builds(
    DecodeSpec,
    height=st.integers(1, 32),
    width=st.integers(1, 32),
    resize=st.sampled_from(RESIZE_POLICIES),
    interpolation=st.sampled_from(sorted(INTERPOLATIONS)),
    max_pixels=st.sampled_from([4_096, 1_000_000]),
    jpeg_draft=st.booleans(),
    exif_transpose=st.booleans(),
)
# 2,000 derandomized examples (a fixed sequence, the same every run) reach every source format and
# every outcome dozens to hundreds of times; 10,000 took a minute of CI and reached no new outcome.
PROPERTY_EXAMPLES = 2_000
SECONDS_PER_DECODE = 2.0


def _peak_rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def _reset_peak_rss() -> int:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0) and return it, KiB."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _peak_rss_kib()


try:
    _reset_peak_rss()
    PEAK_RSS_RESETTABLE = True
except OSError:  # not Linux, or /proc not writable: the memory bound cannot be measured
    PEAK_RSS_RESETTABLE = False


def max_decode_kib(max_pixels: int) -> int:
    """Peak memory one decode may add: a few full-size copies of an allowed image, plus slack.

    Pillow stores RGB, RGBA, I and F at 4 bytes per pixel plus an 8-byte
    pointer per row (as much again per pixel for a one-pixel-wide image); a
    decode keeps at most about four such copies alive at once (decoded,
    converted to RGBA, composited over white, EXIF-transposed; a progressive
    JPEG's coefficients instead of one of them).  The slack covers the
    allocator, zlib/libjpeg state and numpy temporaries of small images.
    """
    return (4 * (4 + 8) * max_pixels + 8 * 2**20) // 1024


@pytest.mark.skipif(not PEAK_RSS_RESETTABLE, reason="needs Linux /proc/self/clear_refs")
def test_peak_rss_probe_sees_a_transient_allocation():
    # The method the property relies on: a freed 64 MiB buffer still shows.
    before = _reset_peak_rss()
    buffer = np.ones(64 * 2**20, dtype=np.uint8)
    del buffer
    assert _peak_rss_kib() - before >= 60 * 1024


def test_decode_is_total_fast_and_bounded_on_mutated_images():
    pillow_global = Image.MAX_IMAGE_PIXELS
    outcomes: dict[str, int] = {}
    slowest = [0.0]

    @settings(max_examples=PROPERTY_EXAMPLES, deadline=None, derandomize=True, database=None)
    @given(data=mutated_images(), spec=PROPERTY_SPECS)
    def decode_is_total(data: bytes, spec: DecodeSpec) -> None:
        before = _reset_peak_rss() if PEAK_RSS_RESETTABLE else 0
        started = time.perf_counter()
        try:
            array, (width, height) = decode_image(data, spec)
        except DECODE_ERRORS as exc:
            outcome = type(exc).__name__
        else:
            outcome = "decoded"
            assert array.shape == (spec.height, spec.width, 3) and array.dtype == np.uint8
            assert max(1, width) * max(1, height) <= spec.max_pixels
        elapsed = time.perf_counter() - started
        assert elapsed < SECONDS_PER_DECODE
        if PEAK_RSS_RESETTABLE:
            assert _peak_rss_kib() - before <= max_decode_kib(spec.max_pixels)
        assert Image.MAX_IMAGE_PIXELS == pillow_global
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        slowest[0] = max(slowest[0], elapsed)

    with warnings.catch_warnings():
        # Pillow warns (UserWarning) about corrupt TIFF/EXIF metadata it skips:
        # a warning is no error row, so only those are let through here (this
        # module's marker turns every other warning into a failure).
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
        decode_is_total()
    assert sum(outcomes.values()) >= PROPERTY_EXAMPLES
    assert outcomes["decoded"] >= PROPERTY_EXAMPLES // 20  # the mutations leave many images decodable too
    print(f"outcomes {outcomes}, slowest decode {slowest[0]:.3f}s")


@pytest.mark.parametrize("fmt, kw", [
    ("PNG", {}), ("GIF", {}), ("WEBP", dict(quality=80)), ("WEBP", dict(lossless=True)), ("JPEG", {}),
    ("JPEG", dict(progressive=True, exif=Image.Exif().tobytes())), ("BMP", {}),
    ("TIFF", {}), ("TIFF", dict(compression="tiff_lzw")), ("PPM", {}),
])  # fmt: skip
def test_declared_size_agrees_with_pillow(fmt, kw):
    # The header sizes refuse bombs before Image.open: they must read what Pillow reads.
    data = encode(noise(37, 23, seed=3), fmt, **kw)
    assert image_headers.declared_size(data) == Image.open(io.BytesIO(data)).size == (37, 23)


def test_declared_size_of_a_bomb_header_refuses_before_pillow_warns():
    # 10_000^2 is over Pillow's default (which only warns below twice it): the header check raises first.
    big_bmp = bytearray(encode(noise(4, 4, seed=1), "BMP"))
    big_bmp[18:26] = struct.pack("<ii", 10_000, -10_000)
    assert image_headers.declared_size(bytes(big_bmp)) == (10_000, 10_000)
    with pytest.raises(Image.DecompressionBombError, match="10000x10000"):
        decode_image(bytes(big_bmp), DecodeSpec(4, 4))


def test_a_model_that_resizes_gets_the_drafted_image_on_its_canvas_with_its_geometry():
    from pipeline.images import CANVAS_SCALE, GEOMETRY, decode_canvas, stack_for_model

    buffer = io.BytesIO()
    Image.new("RGB", (500, 376), (200, 30, 40)).save(buffer, "JPEG", quality=90)
    spec = DecodeSpec(64, 64, resize="pad", resize_in="model")
    canvas, original = decode_canvas(buffer.getvalue(), spec)
    assert original == (500, 376) and canvas.canvas == (CANVAS_SCALE * 64, CANVAS_SCALE * 64)
    geometry = dict(zip(GEOMETRY, canvas.geometry.tolist()))
    # drafted by 1/4 (the smallest DCT scale that keeps the fitted 64x48 covered), no resize on the host
    assert (geometry["height"], geometry["width"]) == (94, 125)
    assert [geometry[k] for k in ("box_top", "box_left", "box_bottom", "box_right")] == [0, 0, 94, 125]
    assert [geometry[k] for k in ("out_top", "out_left", "out_bottom", "out_right")] == [8, 0, 56, 64]
    batch, stacked = stack_for_model([canvas, canvas])
    assert batch.shape == (2, 128, 128, 3) and (stacked == canvas.geometry).all()
    assert (batch[:, :94, :125] == canvas.pixels).all() and not batch[:, 94:].any() and not batch[:, :, 125:].any()
    assert abs(int(canvas.pixels[50, 60, 0]) - 200) <= 3


@pytest.mark.parametrize("kwargs, message", [
    ({"resize_in": "gpu"}, "resize_in must be one of"),
    ({"resize_in": "model", "interpolation": "nearest"}, "nearest is for bit parity on the host"),
])
def test_a_decode_spec_refuses_where_the_resize_cannot_run(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodeSpec(8, 8, **kwargs)
