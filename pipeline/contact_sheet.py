"""The neighbour picture: a query and its nearest neighbours, with scores, as one PNG; and the
thumbnail of one image, which `featurize serve` sends as JPEG."""
from __future__ import annotations

import io
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

from pipeline.images import DECODE_ERRORS, DecodeSpec, open_rgb

_LABEL_HEIGHT = 28
_MARGIN = 6
_BACKGROUND = (255, 255, 255)
_QUERY_BORDER = (220, 40, 40)


def thumbnail(data: bytes, size: int) -> Image.Image:
    """The image decoded (in a draft when it is much larger) and fitted within size x size, its aspect
    kept; raises one of pipeline.images.DECODE_ERRORS for bytes that are not an image."""
    image, _ = open_rgb(data, DecodeSpec(size, size, resize="pad"))
    return ImageOps.contain(image, (size, size))


def _tile(data: bytes | None, size: int) -> Image.Image:
    """A size x size tile: the image fitted and centred, or a grey 'unreadable' tile."""
    tile = Image.new("RGB", (size, size), (235, 235, 235))
    try:
        image = thumbnail(data, size) if data is not None else None
    except DECODE_ERRORS:  # a broken neighbour must not break the picture
        image = None
    if image is None:
        ImageDraw.Draw(tile).text((8, size // 2 - 6), "unreadable", fill=(120, 120, 120))
        return tile
    tile.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return tile


def _fit_text(text: str, width: int, draw: ImageDraw.ImageDraw, font) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def contact_sheet(query: tuple[str, bytes | None] | None, neighbours: Sequence[tuple[str, bytes | None, float]],
                  tile: int = 160, columns: int = 6) -> bytes:
    """PNG bytes: the query (red border) first, then each (label, image bytes, score) in rank order."""
    cells = ([(f"query: {query[0]}", query[1], True)] if query else []) + [
        (f"#{rank} {score:.4f}  {label}", data, False) for rank, (label, data, score) in enumerate(neighbours, 1)]
    columns = max(1, min(columns, len(cells)))
    rows = -(-len(cells) // columns)
    cell_w, cell_h = tile + 2 * _MARGIN, tile + _LABEL_HEIGHT + 2 * _MARGIN
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for index, (label, data, is_query) in enumerate(cells):
        x, y = (index % columns) * cell_w + _MARGIN, (index // columns) * cell_h + _MARGIN
        sheet.paste(_tile(data, tile), (x, y))
        if is_query:
            draw.rectangle([x - 3, y - 3, x + tile + 2, y + tile + 2], outline=_QUERY_BORDER, width=3)
        draw.text((x, y + tile + 6), _fit_text(label, tile, draw, font), fill=(20, 20, 20), font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, "PNG")
    return buffer.getvalue()
