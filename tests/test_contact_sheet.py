"""The neighbour picture is a real PNG with one distinct tile per image."""
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.contact_sheet import contact_sheet, thumbnail
from pipeline.images import DECODE_ERRORS


def png(color):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, "PNG")
    return buffer.getvalue()


def tiles(sheet, count, tile=64, columns=6):
    cell_w, cell_h, margin = tile + 12, tile + 28 + 12, 6
    for i in range(count):
        x, y = (i % columns) * cell_w + margin, (i // columns) * cell_h + margin
        yield np.asarray(sheet.crop((x, y, x + tile, y + tile)))


def test_query_and_neighbours_each_get_a_tile():
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250), (250, 0, 250), (90, 90, 90)]
    data = contact_sheet(("q.jpg", png(colours[0])),
                         [(f"n{i}", png(c), 1.0 - i / 10) for i, c in enumerate(colours[1:])], tile=64)
    sheet = Image.open(io.BytesIO(data))
    assert sheet.format == "PNG" and sheet.size == (6 * 76, 2 * 104)
    centres = [t[32, 32] for t in tiles(sheet.convert("RGB"), len(colours))]
    for centre, colour in zip(centres, colours):
        np.testing.assert_array_equal(centre, colour)  # every tile shows its own image


def test_unreadable_neighbour_is_a_grey_tile_not_a_crash():
    data = contact_sheet(None, [("gone", None, 0.5), ("bad", b"not an image", 0.4)], tile=64)
    sheet = Image.open(io.BytesIO(data)).convert("RGB")
    assert sheet.size == (2 * 76, 104)
    for tile in tiles(sheet, 2, columns=2):
        assert tuple(tile[5, 5]) == (235, 235, 235)


def test_a_thumbnail_keeps_the_aspect_and_refuses_what_is_not_an_image():
    """The one thumbnail of the neighbour picture and of `featurize serve`'s /api/thumbnail."""
    small = thumbnail(png((10, 200, 30)), 16)
    assert small.size == (16, 12) and small.getpixel((8, 6)) == (10, 200, 30)
    with pytest.raises(DECODE_ERRORS):
        thumbnail(b"not an image", 16)
