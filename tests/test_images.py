"""Tests for pipeline.images: decoding, mode conversion, resizing, errors."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from pipeline.images import (
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
    assert Image.MAX_IMAGE_PIXELS == 100_000  # restored


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
