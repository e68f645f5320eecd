"""The "zoo": edge-case image inputs for end-to-end tests.

Not a test module.  ``zoo()`` builds deterministic, tiny samples in memory;
``write_folder`` / ``write_tar_shards`` lay them out as the pipeline's two
input kinds (a directory tree, WebDataset tar shards).
"""

from __future__ import annotations

import io
import json
import pathlib
import posixpath
import tarfile
from dataclasses import dataclass

import numpy as np
from PIL import Image

# The max_pixels the end-to-end tests pass: the bomb sample exceeds it, every
# valid sample stays far below it.
BOMB_MAX_PIXELS: int = 1_000_000


@dataclass(frozen=True)
class Sample:
    name: str  # relative POSIX path, e.g. "sub/dir/cmyk.jpg"
    data: bytes
    valid: bool  # True -> exactly one feature row; False -> exactly one error row
    width: int | None  # size a viewer shows (after EXIF); None when invalid
    height: int | None


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _pattern(width: int, height: int, seed: int) -> np.ndarray:
    """Distinct content per seed: a random-coloured gradient plus mild noise.

    Smooth enough to compress small and to survive JPEG, noisy enough that
    no two samples share features.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    c0, cx, cy = rng.uniform(0, 255, (3, 3))
    gradient = c0 + (cx - c0) * (x / max(1, width - 1))[..., None] + (cy - c0) * (y / max(1, height - 1))[..., None]
    gradient = gradient / 2 + 64  # keep room for the noise
    noisy = gradient + rng.normal(0, 12, gradient.shape)
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def _rgb(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(_pattern(width, height, seed), "RGB")


def _gray(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(_pattern(width, height, seed)[..., 0], "L")


def _valid(name: str, data: bytes, width: int, height: int) -> Sample:
    return Sample(name, data, True, width, height)


def _invalid(name: str, data: bytes) -> Sample:
    return Sample(name, data, False, None, None)


def zoo() -> list[Sample]:
    """All samples, valid first; same bytes on every call (seeded)."""
    samples: list[Sample] = []
    add = samples.append

    add(_valid("rgb_jpeg.jpg", _encode(_rgb(48, 32, 1), "JPEG", quality=90), 48, 32))
    add(_valid("rgb_png.png", _encode(_rgb(40, 30, 2), "PNG"), 40, 30))
    add(_valid("gray_jpeg.jpg", _encode(_gray(32, 48, 3), "JPEG", quality=90), 32, 48))
    add(_valid("gray_png.png", _encode(_gray(30, 20, 4), "PNG"), 30, 20))

    cmyk = Image.fromarray(np.dstack([_pattern(36, 28, 5), _pattern(36, 28, 6)[..., :1]]), "CMYK")
    add(_valid("sub/dir/cmyk.jpg", _encode(cmyk, "JPEG", quality=90), 36, 28))

    sixteen = (_pattern(24, 20, 7)[..., 0].astype(np.uint16) * 257).astype("<u2")
    add(_valid("sixteen_bit.png", _encode(Image.frombytes("I;16", (24, 20), sixteen.tobytes()), "PNG"), 24, 20))

    rgba = np.dstack([_pattern(20, 20, 8), np.tile(np.linspace(0, 255, 20, dtype=np.uint8), (20, 1))])
    add(_valid("rgba.png", _encode(Image.fromarray(rgba, "RGBA"), "PNG"), 20, 20))

    palette = _rgb(22, 18, 9).quantize(colors=16)
    palette.putpixel((0, 0), 0)  # at least one pixel uses the transparent index
    add(_valid("palette_transparent.png", _encode(palette, "PNG", transparency=0), 22, 18))

    frames = [_rgb(16, 16, 10), _rgb(16, 16, 11)]
    gif = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    add(_valid("animated.gif", gif, 16, 16))

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    add(_valid("exif_rotated.jpg", _encode(_rgb(40, 20, 12), "JPEG", quality=90, exif=exif), 20, 40))

    add(_valid("one_pixel.png", _encode(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG"), 1, 1))
    add(_valid("panorama.jpg", _encode(_rgb(2000, 10, 13), "JPEG", quality=85), 2000, 10))
    add(_valid("ünïcødé/фото.jpg", _encode(_rgb(28, 28, 14), "JPEG", quality=90), 28, 28))
    add(_valid("png_named.jpg", _encode(_rgb(26, 18, 15), "PNG"), 26, 18))  # wrong extension
    add(_valid("a.b.c.jpg", _encode(_rgb(18, 26, 16), "JPEG", quality=90), 18, 26))
    add(_valid("UPPER.JPG", _encode(_rgb(30, 24, 17), "JPEG", quality=90), 30, 24))
    add(_valid("bitmap.bmp", _encode(_rgb(20, 12, 18), "BMP"), 20, 12))
    add(_valid("lossless.webp", _encode(_rgb(24, 16, 19), "WEBP", lossless=True), 24, 16))
    add(_valid("scan.tiff", _encode(_rgb(16, 24, 20), "TIFF"), 16, 24))

    # Random bytes with a non-image first byte, so they can never pass as an image.
    corrupt = b"\x00" + np.random.default_rng(21).integers(0, 256, 511, dtype=np.uint8).tobytes()
    add(_invalid("corrupt.jpg", corrupt))
    full = _encode(_rgb(64, 64, 22), "JPEG", quality=90)
    add(_invalid("truncated.jpg", full[: len(full) // 2]))
    add(_invalid("empty.png", b""))
    add(_invalid("not_an_image.jpg", b"this is a text file, not a JPEG\n" * 4))
    # 2000x2000 = 4 Mpx > BOMB_MAX_PIXELS, yet only a few KB on disk.
    add(_invalid("bomb.png", _encode(Image.new("L", (2000, 2000), 128), "PNG")))
    return samples


def webdataset_key(name: str) -> str:
    """WebDataset sample key: the path up to the FIRST dot of the base name.

    "dir/a.b.jpg" -> "dir/a" (its field is "b.jpg").
    """
    directory, base = posixpath.split(name)
    stem = base.split(".", 1)[0]
    return posixpath.join(directory, stem) if directory else stem


def write_folder(root: pathlib.Path, samples: list[Sample]) -> None:
    """Write each sample at root/<name>, creating sub-directories."""
    root = pathlib.Path(root)
    for sample in samples:
        path = root.joinpath(*sample.name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample.data)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # deterministic archives
    tar.addfile(info, io.BytesIO(data))


def write_tar_shards(
    dir: pathlib.Path, samples: list[Sample], n_shards: int, prefix: str = "shard"
) -> list[pathlib.Path]:
    """Write WebDataset shards <prefix>-000000.tar ...; samples go round-robin.

    Each sample becomes its image member (named as the sample) directly
    followed by a sidecar "<key>.json" = {"name": ...}; sidecars are not
    inputs.  Raises ValueError if two samples would share a WebDataset key.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    keys = [webdataset_key(s.name) for s in samples]
    if len(set(keys)) != len(keys):
        raise ValueError(f"samples share WebDataset keys: {sorted(k for k in set(keys) if keys.count(k) > 1)}")
    directory = pathlib.Path(dir)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{prefix}-{i:06d}.tar" for i in range(n_shards)]
    for shard, path in enumerate(paths):
        # PAX format: UTF-8 member names (the non-ASCII sample) round-trip.
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for sample, key in list(zip(samples, keys))[shard::n_shards]:
                # Members of one sample must be adjacent for WebDataset.
                _add_member(tar, sample.name, sample.data)
                _add_member(tar, f"{key}.json", json.dumps({"name": sample.name}, ensure_ascii=False).encode())
    return paths
