"""Image decoding: encoded bytes -> fixed-size RGB uint8 array.

Pure functions on top of Pillow, deliberately free of Beam/Keras/TensorFlow
imports so they can be unit-tested fast and reused from any worker.

Decoding rules (why they are what they are):

* Errors are always exceptions (empty/non-image/truncated/bomb), never a
  silently wrong image: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left off.
* For RGB and L inputs with ``resize="squash"`` or ``"center-crop"`` the
  pixels are bit-identical to ``keras.utils.load_img`` (with
  ``keep_aspect_ratio`` for center-crop) when ``interpolation="nearest"``, or
  for any interpolation with ``jpeg_draft=False``; not for EXIF-rotated files,
  which Keras does not rotate.  Features then match a model trained through
  Keras' own loader.
* Everything else (alpha, 16-bit, CMYK, palettes, EXIF orientation) follows
  what an image viewer shows.
"""

from __future__ import annotations

import io
import posixpath
import re
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

RESIZE_POLICIES: tuple[str, ...] = ("squash", "center-crop", "pad")

# Same names as keras.utils.load_img accepts, so configs are interchangeable.
INTERPOLATIONS: dict[str, int] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif",
        ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
        ".ppm", ".pgm", ".pbm", ".pnm",
    }
)  # fmt: skip

# Pillow's own default, captured at import so a later global change elsewhere
# does not silently change what "default" means here.
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

# Every exception decode_image/open_rgb raise for bad input, and nothing else
# (anything outside is a bug here, not a bad image): callers turn exactly these
# into error rows.  ValueError: empty input; UnidentifiedImageError: not an
# image of an accepted format; DecompressionBombError: over spec.max_pixels;
# OSError: truncated or corrupt data; SyntaxError: what Pillow's parsers raise
# for some damaged files ("broken PNG file").
DECODE_ERRORS: tuple[type[Exception], ...] = (
    ValueError, UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
)

# Content-based format allow-list for Image.open: only the formats behind
# IMAGE_EXTENSIONS (JPEG includes MPO, the multi-picture JPEG of cameras).  This
# keeps untrusted bytes away from plugins such as EPS, which shells out to
# Ghostscript, while a file's extension still does not matter.
_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "DIB", "WEBP", "TIFF", "PPM")

# Formats whose decoder can downscale by 1/2, 1/4, 1/8 in the DCT (draft).
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> transpose that makes the image look as a viewer shows it
# (same table as PIL.ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255)

def is_image_name(name: str) -> bool:
    """True when the last extension of ``name`` is a known image extension.

    Case-insensitive; directories in the name are ignored (either separator);
    a leading dot ("hidden file") is not an extension, as in os.path.splitext.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return posixpath.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def extension_of(name: str) -> str:
    """The last extension of ``name``, lower-cased with its dot (``""`` when there is none)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return posixpath.splitext(base)[1].lower()


# Leading bytes of the formats featurize decodes (_FORMATS), for files without an extension.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
    (b"P1", "PPM"), (b"P2", "PPM"), (b"P3", "PPM"), (b"P4", "PPM"), (b"P5", "PPM"), (b"P6", "PPM"),
)
SNIFF_BYTES = 16


def sniff_image_format(head: bytes) -> str | None:
    """The image format the first bytes of a file announce (JPEG, PNG, GIF, BMP, TIFF, PPM, WEBP), or None.

    For files without an extension (cameras and scrapers write them): a file is read as an
    image only when its bytes say so; the decoder still checks everything else.
    """
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for signature, fmt in _SIGNATURES:
        if head.startswith(signature):
            # "BM" and "P1".."P6" are short: require what follows to look like the format too.
            if fmt == "BMP" and len(head) < 14:
                return None
            if fmt == "PPM" and (len(head) < 3 or head[2:3] not in b" \t\r\n#"):
                return None
            return fmt
    return None


@dataclass(frozen=True)
class DecodeSpec:
    """How to turn bytes into a ``(height, width, 3)`` uint8 array."""

    height: int
    width: int
    resize: str = "squash"  # one of RESIZE_POLICIES
    interpolation: str = "bilinear"  # one of INTERPOLATIONS
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # None disables the bomb check
    jpeg_draft: bool = True
    exif_transpose: bool = True

    def __post_init__(self) -> None:
        # Fail at configuration time, not on the millionth image.
        for field_name in ("height", "width"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field_name} must be a positive int, got {value!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ValueError(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.max_pixels is not None and (
            isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1
        ):
            raise ValueError(f"max_pixels must be a positive int or None, got {self.max_pixels!r}")


def _check_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    """Raise DecompressionBombError when ``size`` has more than ``max_pixels`` pixels (None: no limit)."""
    if max_pixels is None:
        return
    width, height = size
    # Same pixel count as Pillow's own check (a zero side counts as 1).
    pixels = max(1, width) * max(1, height)
    if pixels > max_pixels:
        raise Image.DecompressionBombError(
            f"Image size {width}x{height} ({pixels} pixels) exceeds limit of "
            f"{max_pixels} pixels, could be decompression bomb DOS attack."
        )


# Pillow checks sizes against one process global, Image.MAX_IMAGE_PIXELS (a
# warning above it, DecompressionBombError above twice it), inside Image.open and
# inside loaders right before they allocate (a GIF's first frame, TIFF tiles).
# featurize never replaces Pillow's functions (a private name changes with any
# release: Pillow 13 broke every WebP that way).  Instead the spec's limit is
# enforced by featurize's own checks, exactly and per call: the size a header
# declares, before Image.open, for the formats whose plugins allocate or warn
# inside it (PNG, GIF's first frame, WebP's canvas), and img.size right after
# Image.open, before any pixel is decoded.  The global is only ever loosened, to
# the loosest limit a spec in this process asked for (a worker runs one
# configuration, so in practice once per process): Pillow then never refuses
# what a spec allows, and its checks remain a backstop.
_GLOBAL_LIMIT_LOCK = threading.Lock()


def allow_pixels(max_pixels: int | None) -> None:
    """Loosen Pillow's public ``Image.MAX_IMAGE_PIXELS`` to at least ``max_pixels`` (None: no limit)."""
    current = Image.MAX_IMAGE_PIXELS
    if current is None or (max_pixels is not None and current >= max_pixels):
        return
    with _GLOBAL_LIMIT_LOCK:
        current = Image.MAX_IMAGE_PIXELS
        if max_pixels is None or (current is not None and current < max_pixels):
            Image.MAX_IMAGE_PIXELS = max_pixels


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR" or len(data) < 24:
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _gif_canvas(data: bytes) -> tuple[int, int] | None:
    """The size Pillow gives a GIF once its first frame is read: the screen widened by that frame.

    Pillow allocates the first frame and its disposal buffer inside Image.open.
    """
    if len(data) < 13:
        return None
    width, height = int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    flags, pos = data[10], 13
    if flags & 0x80:  # global colour table
        pos += 3 << ((flags & 7) + 1)
    while pos < len(data):
        block = data[pos]
        if block == 0x2C:  # image descriptor: left, top, width, height
            if pos + 9 > len(data):
                break
            left, top, w, h = (int.from_bytes(data[pos + i : pos + i + 2], "little") for i in (1, 3, 5, 7))
            return max(width, left + w), max(height, top + h)
        if block != 0x21:  # not an extension: trailer or damage, nothing more to learn
            break
        pos += 2  # introducer and label, then sub-blocks up to an empty one
        while pos < len(data) and data[pos]:
            pos += 1 + data[pos]
        pos += 1
    return width, height


def _webp_canvas(data: bytes) -> tuple[int, int] | None:
    """The canvas size a WebP header declares.

    libwebp's animation decoder allocates two canvas-sized RGBA buffers inside Image.open.
    """
    if len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: canvas size minus one, 24 bits each
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 ":  # lossy key frame: 14-bit sizes after the start code
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14-bit sizes minus one, packed after the signature byte
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + (bits >> 14 & 0x3FFF)
    return None


# Start-of-frame markers (baseline, progressive, lossless, arithmetic): not DHT (C4), JPG (C8), DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 9 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _JPEG_SOF:
            return int.from_bytes(data[pos + 7 : pos + 9], "big"), int.from_bytes(data[pos + 5 : pos + 7], "big")
        elif marker == 0xDA:  # start of scan before any frame header: damaged
            return None
        elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    if int.from_bytes(data[14:18], "little") == 12:  # OS/2 core header: 16-bit sizes
        return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
    width = int.from_bytes(data[18:22], "little", signed=True)
    height = int.from_bytes(data[22:26], "little", signed=True)  # negative: stored top-down
    return abs(width), abs(height)


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "little" if data[:2] == b"II" else "big"
    ifd = int.from_bytes(data[4:8], order)
    count = int.from_bytes(data[ifd : ifd + 2], order)
    sizes = {}
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(data) - 11), 12):
        tag, kind = int.from_bytes(data[entry : entry + 2], order), int.from_bytes(data[entry + 2 : entry + 4], order)
        if tag in (256, 257) and kind in (3, 4):  # ImageWidth, ImageLength as SHORT or LONG
            sizes[tag] = int.from_bytes(data[entry + 8 : entry + (10 if kind == 3 else 12)], order)
    return (sizes[256], sizes[257]) if len(sizes) == 2 else None


def _ppm_size(data: bytes) -> tuple[int, int] | None:
    # Whitespace-separated ASCII fields after the magic, '#' comments to the end of a line.
    fields = re.sub(rb"#[^\r\n]*", b" ", data[2:1024]).split(None, 2)
    if len(fields) < 3 or not (fields[0].isdigit() and fields[1].isdigit()):
        return None
    return int(fields[0]), int(fields[1])


# Sizes as the headers declare them, read before Image.open, so a bomb is refused
# before Pillow allocates for it or warns about it (keyed by sniff_image_format).
_HEADER_SIZES = {
    "PNG": _png_size, "GIF": _gif_canvas, "WEBP": _webp_canvas, "JPEG": _jpeg_size,
    "BMP": _bmp_size, "TIFF": _tiff_size, "PPM": _ppm_size,
}  # fmt: skip


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the header of ``data`` declares it; None when unknown or unreadable."""
    reader = _HEADER_SIZES.get(sniff_image_format(data[:SNIFF_BYTES]) or "")
    return reader(data) if reader is not None else None


def _open_checked(data: bytes, max_pixels: int | None) -> Image.Image:
    """Image.open (header only) with the decompression-bomb check at 1x the limit, before and after."""
    declared = declared_size(data)
    if declared is not None:
        _check_pixels(declared, max_pixels)
    allow_pixels(max_pixels)
    img = Image.open(io.BytesIO(data), formats=_FORMATS)
    # Explicit, whatever Pillow's plugins check: the size every later step
    # (draft, load, frame 0 of an animation) works within, before any pixel
    # is decoded.
    _check_pixels(img.size, max_pixels)
    return img


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8; 1 when absent or unreadable.

    A damaged EXIF block does not make the pixels wrong, so it must not turn a
    decodable image into an error; it is shown as stored, as viewers do.
    """
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - any EXIF parser failure means "unknown"
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION_TRANSPOSE else 1


def _fit_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Largest (w, h) with the aspect of ``size`` inside ``target``; each side >= 1."""
    (iw, ih), (tw, th) = size, target
    iw, ih = max(1, iw), max(1, ih)
    if iw * th >= ih * tw:  # wider than the target: width is the binding side
        # Integer round-half-up of ih * tw / iw: exact, no float surprises.
        return tw, max(1, min(th, (2 * ih * tw + iw) // (2 * iw)))
    return max(1, min(tw, (2 * iw * th + ih) // (2 * ih))), th


def _draft_request(display_size: tuple[int, int], spec: DecodeSpec) -> tuple[int, int]:
    """Smallest (w, h), in display orientation, the resize policy needs as input.

    Pillow's draft keeps each side >= the requested one.  squash needs the
    target itself; center-crop too (the largest centred crop of an image with
    both sides >= target covers the target); pad needs only the fitted size.
    """
    target = (spec.width, spec.height)
    if spec.resize == "pad":
        return _fit_size(display_size, target)
    return target


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, alpha composited over white."""
    mode = img.mode
    if mode == "RGB":
        return img  # untouched: Keras' load_img does the same (parity)
    if mode == "L":
        return img.convert("RGB")  # exactly Keras' conversion (parity)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        # White, not black: transparent backgrounds of logos/product shots
        # are meant to be seen on a page, and black would invent dark edges.
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    # I and F below stay in the image's own 16/32-bit dtype: an int64/float64
    # copy would double the peak memory of a large image.
    if mode.startswith("I"):
        # I;16* (uint16), and I (int32; Pillow stores 16-bit PGM/PPM as I
        # scaled to 0..65535): keep the top 8 bits.  Pillow's convert would
        # clip at 255 instead and turn almost every 16-bit image white.
        values = np.asarray(img)
        if values.dtype.kind == "i":  # I: negatives and > 16 bits clip first
            values = np.clip(values, 0, 0xFFFF)
        gray = (values >> 8).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        # Float data is taken as already on the 0..255 scale; NaN -> 0.
        values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0)  # a writable copy
        np.clip(values, 0.0, 255.0, out=values)
        gray = np.rint(values, out=values).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    # 1, P (opaque), CMYK, YCbCr, RGBX, LAB, HSV...: Pillow's own conversion.
    return img.convert("RGB")


def open_rgb(data: bytes, spec: DecodeSpec) -> tuple[Image.Image, tuple[int, int]]:
    """Decode bytes to a fully loaded RGB image (first frame, EXIF-oriented).

    Returns (RGB image, (original_width, original_height)); the original size
    is the one a viewer shows (after EXIF rotation), before any JPEG draft.
    The image may be smaller than the original (JPEG draft) but never smaller
    than what ``resize_image`` needs for ``spec``.

    Raises only DECODE_ERRORS for bad input: ValueError for empty input,
    PIL.UnidentifiedImageError for non-images, OSError or SyntaxError for
    truncated/corrupt data and PIL.Image.DecompressionBombError above
    ``spec.max_pixels``, checked before any pixel is decoded.
    """
    if not data:
        raise ValueError("empty file")
    return _load_rgb(_open_checked(data, spec.max_pixels), spec)


def _load_rgb(img: Image.Image, spec: DecodeSpec) -> tuple[Image.Image, tuple[int, int]]:
    # Animated GIF/APNG/WebP: the first frame is the image's "poster".
    img.seek(0)
    original = img.size  # before draft, which shrinks img.size
    fmt = img.format
    orientation = 1
    if spec.exif_transpose and fmt in _DRAFT_FORMATS:
        # JPEG EXIF is parsed at open: cheap, and draft needs it before load.
        orientation = _orientation(img)
    swap = orientation in _SWAPS_AXES
    display = (original[1], original[0]) if swap else original

    # Nearest must stay bit-identical to Keras, which never drafts.
    if spec.jpeg_draft and fmt in _DRAFT_FORMATS and spec.interpolation != "nearest":
        need_w, need_h = _draft_request(display, spec)
        # Draft works on the stored (pre-rotation) axes.
        img.draft(img.mode, (need_h, need_w) if swap else (need_w, need_h))

    img.load()  # decode now so errors surface here, as exceptions

    if spec.exif_transpose:
        if fmt not in _DRAFT_FORMATS:
            # e.g. PNG may keep eXIf after the image data: read after load.
            orientation = _orientation(img)
            swap = orientation in _SWAPS_AXES
            display = (original[1], original[0]) if swap else original
        method = _ORIENTATION_TRANSPOSE.get(orientation)
        if method is not None:
            img = img.transpose(method)
    return _to_rgb(img), display


def _center_crop_box(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int, int, int]:
    """Largest centred box with the target aspect: Keras' load_img arithmetic."""
    width, height = size
    target_width, target_height = target
    # Verbatim from keras/src/utils/image_utils.py (keep_aspect_ratio=True),
    # except the max(1, ...): Keras produces an empty box for tiny images
    # with extreme target aspects, which Pillow would happily "resize".
    crop_height = min(height, max(1, (width * target_height) // target_width))
    crop_width = min(width, max(1, (height * target_width) // target_height))
    hstart = (height - crop_height) // 2
    wstart = (width - crop_width) // 2
    return (wstart, hstart, wstart + crop_width, hstart + crop_height)


def resize_image(img: Image.Image, spec: DecodeSpec) -> Image.Image:
    """Resize an RGB image to exactly (spec.width, spec.height) per ``spec.resize``."""
    target = (spec.width, spec.height)
    if img.size == target:
        return img  # Keras skips the resize too; any resample would alter pixels
    resample = INTERPOLATIONS[spec.interpolation]
    if spec.resize == "squash":
        return img.resize(target, resample)
    if spec.resize == "center-crop":
        # resize(box=...) like Keras (not crop() then resize()): the filter may
        # read pixels just outside the box, so results match Keras exactly.
        return img.resize(target, resample, box=_center_crop_box(img.size, target))
    if spec.resize == "pad":
        fitted = _fit_size(img.size, target)
        scaled = img if img.size == fitted else img.resize(fitted, resample)
        if fitted == target:
            return scaled
        canvas = Image.new("RGB", target, (0, 0, 0))
        canvas.paste(scaled, ((target[0] - fitted[0]) // 2, (target[1] - fitted[1]) // 2))
        return canvas
    raise ValueError(f"unknown resize policy {spec.resize!r}")


def decode_image(data: bytes, spec: DecodeSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """bytes -> (HxWx3 uint8 C-contiguous array of exactly (spec.height, spec.width, 3), (orig_w, orig_h)).

    The array is a fresh, writable copy (np.asarray on a Pillow image is
    read-only, which breaks in-place preprocessing downstream).  Bad input
    raises one of DECODE_ERRORS (see open_rgb).
    """
    img, original = open_rgb(data, spec)
    img = resize_image(img, spec)
    array = np.array(img, dtype=np.uint8)
    if array.shape != (spec.height, spec.width, 3):  # defensive: never a wrong shape
        raise ValueError(f"decoded shape {array.shape} != {(spec.height, spec.width, 3)}")
    return array, original
