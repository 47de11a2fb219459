"""The large-image write stage: row blocks -> tiles -> tiled BigTIFF; the row spool."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from segtool.errors import OutputError
from segtool.pipeline.write import RowSpool, row_tiles, write_tiled_tiff


def _assemble(tiles, shape, tile):
    out = np.zeros(shape, np.int64)
    k = 0
    for top in range(0, shape[0], tile[0]):
        for left in range(0, shape[1], tile[1]):
            t = tiles[k]
            out[top : top + t.shape[0], left : left + t.shape[1]] = t
            k += 1
    assert k == len(tiles)
    return out


@pytest.mark.parametrize("cuts", [[0, 37], [0, 5, 6, 20, 30], [0, 16, 32]])
def test_row_tiles_do_not_depend_on_how_rows_arrive(cuts):
    image = np.arange(37 * 23).reshape(37, 23)
    bounds = cuts + [37] if cuts[-1] != 37 else cuts
    blocks = [image[a:b] for a, b in zip(bounds, bounds[1:])]
    tiles = list(row_tiles(blocks, (16, 10)))
    assert len(tiles) == 3 * 3
    np.testing.assert_array_equal(_assemble(tiles, image.shape, (16, 10)), image)


def test_write_tiled_tiff_round_trip_and_calibration(tmp_path):
    image = np.random.default_rng(1).integers(0, 70000, (700, 530)).astype(np.uint32)
    path = write_tiled_tiff(tmp_path / "l.tif", row_tiles([image[:300], image[300:]]), image.shape, np.uint32,
                            pixel_size=(0.5, 0.25), unit="micron", unit_in_metadata=True)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and (page.tilelength, page.tilewidth) == (512, 512)
        np.testing.assert_array_equal(page.asarray(), image)
        assert page.tags["XResolution"].value == (4, 1)
        assert tif.shaped_metadata[0]["unit"] == "micron"
    with pytest.raises(OutputError, match="exists"):
        write_tiled_tiff(path, row_tiles([image]), image.shape, np.uint32)


def test_spool_reads_back_rows_and_planes(tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 9, (50, 7)).astype(np.uint32)
    maps = rng.random((3, 50, 7)).astype(np.float32)
    spool, planes = RowSpool(tmp_path, 7, np.uint32), RowSpool(tmp_path, 7, np.float32)
    for a, b in [(0, 12), (12, 13), (13, 50)]:
        spool.append(labels[a:b])
        planes.append(maps[:, a:b])
    assert spool.rows == 50
    np.testing.assert_array_equal(spool.read(10, 20), labels[10:20])
    np.testing.assert_array_equal(np.concatenate(list(spool.blocks(16))), labels)
    for channel in range(3):
        np.testing.assert_array_equal(np.concatenate(list(planes.blocks(9, plane=channel))), maps[channel])
    spool.close()
    planes.close()
    assert not spool.path.exists() and not list(tmp_path.iterdir())
