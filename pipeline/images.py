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
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.image_headers import declared_size

RESIZE_POLICIES: tuple[str, ...] = ("squash", "center-crop", "pad")

# Where the resize to the model's input runs: "host" (Pillow; bit parity with keras.utils.load_img) or
# "model" (the host only decodes, with JPEG draft, onto a fixed canvas; the compiled model resamples with
# Pillow's filter arithmetic in float: pipeline.model.resample).
RESIZE_PLACES: tuple[str, ...] = ("host", "model")
# The model's canvas is this many times its input per side: after JPEG draft (which keeps each side >= the
# target, < 2x it when the aspect matches) an image fits it, and a resample from it reads a bounded number of
# pixels per output pixel (its scale is at most 3 whatever the policy: see canvas_image).
CANVAS_SCALE = 2

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
    resize_in: str = "host"  # one of RESIZE_PLACES

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
        if self.resize_in not in RESIZE_PLACES:
            raise ValueError(f"resize_in must be one of {RESIZE_PLACES}, got {self.resize_in!r}")
        if self.resize_in == "model" and self.interpolation == "nearest":
            raise ValueError("resize_in 'model' resamples with a filter; nearest is for bit parity on the host")
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


@dataclass(frozen=True, eq=False)
class Canvas:
    """A decoded image for a model that resizes (`resize_in="model"`): its pixels, which go to the top-left of
    a fixed canvas of CANVAS_SCALE x the model's input when batched (`stack_for_model`: one copy, straight into
    the batch), and what the model resamples (`geometry`, GEOMETRY's order): the image's size, the box of it
    to resample (Pillow's `resize(box=)`) and the rectangle of the output it fills (black elsewhere: `pad`)."""

    pixels: np.ndarray  # (h, w, 3) uint8, each side at most the canvas's
    geometry: np.ndarray  # float32, GEOMETRY
    canvas: tuple[int, int]  # (height, width) of the canvas (canvas_size)

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes + self.geometry.nbytes


GEOMETRY: tuple[str, ...] = ("height", "width", "box_top", "box_left", "box_bottom", "box_right",
                             "out_top", "out_left", "out_bottom", "out_right")


def canvas_size(spec: DecodeSpec) -> tuple[int, int]:
    """(height, width) of the canvas a model that resizes takes its images on."""
    return CANVAS_SCALE * spec.height, CANVAS_SCALE * spec.width


def canvas_image(img: Image.Image, spec: DecodeSpec) -> Canvas:
    """A decoded RGB image on the model's canvas, with the geometry of `resize_image`'s policy.

    An image larger than the canvas is first reduced on the host by whole factors per axis (Pillow's
    `reduce`, a box filter: cheap, and it keeps each side >= the canvas's half, i.e. >= the target). The
    resample then shrinks by at most 2 (squash, center-crop) or 3 (pad, whose fitted size is rounded)."""
    canvas_h, canvas_w = canvas_size(spec)
    factors = (-(-img.width // canvas_w), -(-img.height // canvas_h))
    if factors != (1, 1):
        img = img.reduce(factors)
    target = (spec.width, spec.height)
    box = (0, 0, img.width, img.height)
    out = (0, 0, spec.width, spec.height)
    if spec.resize == "center-crop":
        box = _center_crop_box(img.size, target)
    elif spec.resize == "pad":
        fitted = _fit_size(img.size, target)
        left, top = (target[0] - fitted[0]) // 2, (target[1] - fitted[1]) // 2
        out = (left, top, left + fitted[0], top + fitted[1])
    geometry = np.array([img.height, img.width, box[1], box[0], box[3], box[2], out[1], out[0], out[3], out[2]],
                        np.float32)
    return Canvas(np.asarray(img), geometry, (canvas_h, canvas_w))


def decode_canvas(data: bytes, spec: DecodeSpec) -> tuple[Canvas, tuple[int, int]]:
    """bytes -> (the image on the model's canvas, (orig_w, orig_h)): `decode_image` without the resize, for
    `resize_in="model"`. Bad input raises one of DECODE_ERRORS (see open_rgb)."""
    img, original = open_rgb(data, spec)
    return canvas_image(img, spec), original


def decode_for_model(data: bytes, spec: DecodeSpec) -> tuple[np.ndarray | Canvas, tuple[int, int]]:
    """What the model takes for `spec` (pixels at its input size, or a Canvas when it resizes), and the
    original size."""
    return decode_canvas(data, spec) if spec.resize_in == "model" else decode_image(data, spec)


def stack_for_model(images: Sequence[np.ndarray | Canvas]) -> tuple[np.ndarray, np.ndarray | None]:
    """A batch for `FeatureModel.infer`: (pixels, None), or (canvases, their geometry) for a model that resizes."""
    if images and isinstance(images[0], Canvas):
        batch = np.zeros((len(images), *images[0].canvas, 3), np.uint8)
        for canvas, image in zip(batch, images):
            height, width = image.pixels.shape[:2]
            canvas[:height, :width] = image.pixels
        return batch, np.stack([image.geometry for image in images])
    return np.stack(images), None
