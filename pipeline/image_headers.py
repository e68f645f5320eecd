"""What the first bytes of an image file say, read without decoding: its format and its declared size.

Pure byte parsing (no Pillow call): `sniff_image_format` lets files without an extension in, and
`declared_size` lets pipeline.images refuse a decompression bomb before Pillow allocates for it or
warns about it. Every reader is total: damaged bytes give None, never an exception.
"""
from __future__ import annotations

import re

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
