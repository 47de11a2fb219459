"""Big-image I/O: lazy block reading (TIFF, Zarr, OME-Zarr) and label writers (OME-Zarr, tiled BigTIFF)."""

from __future__ import annotations

import json
import pickle
import threading
import time

import numpy as np
import pytest
import tifffile

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")

from segtool.distributed import blockio, labelstore  # noqa: E402
from segtool.distributed.blockio import is_zarr_path, open_blocks  # noqa: E402
from segtool.distributed.labelstore import write_labels_tiff, write_labels_zarr  # noqa: E402
from segtool.errors import InputError, OutputError  # noqa: E402
from segtool.io import read_image  # noqa: E402

SHAPE = (300, 410)


def _image(rng, dtype):
    if np.dtype(dtype).kind == "f":
        return (rng.random(SHAPE) * 1000).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, SHAPE, dtype=dtype, endpoint=True)


def _labels(rng, high=40):
    """A label image with a ramp of ids plus random objects, as int64 (the writers pick the dtype)."""
    labels = np.zeros(SHAPE, np.int64)
    labels[10:60, 20:300] = np.arange(280) % high + 1
    labels[100:290:7, 5:400:9] = rng.integers(1, high + 1, labels[100:290:7, 5:400:9].shape)
    return labels


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- reading TIFF


TIFF_LAYOUTS = {
    "striped": dict(rowsperstrip=7),
    "contiguous": dict(),
    "zlib-tiled": dict(tile=(64, 64), compression="zlib"),
    "bigtiff-tiled": dict(tile=(128, 64), compression="zlib", bigtiff=True),
    "big-endian": dict(byteorder=">", compression="zlib"),
}


@pytest.mark.parametrize("layout", TIFF_LAYOUTS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_blocks_equal_read_image(tmp_path, rng, layout, dtype):
    data = _image(rng, dtype)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, data, **TIFF_LAYOUTS[layout])
    image = open_blocks(path, chunks=128)
    assert image.data.dtype == dtype and image.data.shape == SHAPE
    assert max(image.data.chunks[0]) == 128 and max(image.data.chunks[1]) == 128
    out = image.data.compute()
    np.testing.assert_array_equal(out, read_image(path).data)
    assert out.dtype == read_image(path).data.dtype


def test_tiff_blocks_align_to_tiles(tmp_path, rng):
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, _image(rng, np.uint16), tile=(96, 64), compression="zlib")
    image = open_blocks(path, chunks=128)  # 128 rows -> one 96-row tile; 128 columns -> two 64-column tiles
    assert image.data.chunks[0][0] == 96 and image.data.chunks[1][0] == 128
    np.testing.assert_array_equal(image.data.compute(), read_image(path).data)


def test_tiff_pixel_size_carried(tmp_path, rng):
    path = tmp_path / "cal.tif"
    tifffile.imwrite(path, _image(rng, np.uint16), imagej=True, resolution=(1 / 0.25, 1 / 0.5), metadata={"unit": "um"})
    image, reference = open_blocks(path, chunks=128), read_image(path)
    assert image.pixel_size == pytest.approx((0.5, 0.25))
    assert (image.pixel_size, image.unit) == (reference.pixel_size, reference.unit)
    assert image.unit == "micron"


@pytest.mark.parametrize("layout", ["contiguous", "zlib-tiled"])
def test_rgb_is_averaged_like_read_image(tmp_path, rng, layout):
    rgb = rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", **TIFF_LAYOUTS[layout])
    image = open_blocks(path, chunks=100)
    assert image.data.dtype == np.float32
    np.testing.assert_array_equal(image.data.compute(), read_image(path).data)
    np.testing.assert_array_equal(open_blocks(path, channel=2, chunks=100).data.compute(), rgb[..., 2])


def test_channel_stack_needs_channel(tmp_path, rng):
    stack = rng.integers(0, 4000, (3, *SHAPE), dtype=np.uint16)
    path = tmp_path / "cyx.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", metadata={"axes": "CYX"}, compression="zlib")
    with pytest.raises(InputError, match=r"3 channels .*pick one with --channel N \(0\.\.2\)") as err:
        open_blocks(path)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="out of range"):
        open_blocks(path, channel=3)
    image = open_blocks(path, channel=1, chunks=128)
    np.testing.assert_array_equal(image.data.compute(), read_image(path, channel=1).data)
    np.testing.assert_array_equal(image.data.compute(), stack[1])


def test_plane_stack_needs_plane(tmp_path, rng):
    stack = rng.integers(0, 255, (4, *SHAPE), dtype=np.uint8)
    path = tmp_path / "zyx.tif"
    tifffile.imwrite(path, stack, photometric="minisblack", metadata={"axes": "ZYX"})
    with pytest.raises(InputError, match=r"stack of 4 planes along axis Z .*--plane"):
        open_blocks(path)
    np.testing.assert_array_equal(open_blocks(path, plane=3, chunks=128).data.compute(), stack[3])


def test_graph_pickles_without_file_handles(tmp_path, rng):
    path = tmp_path / "p.tif"
    data = _image(rng, np.uint16)
    tifffile.imwrite(path, data, tile=(64, 64), compression="zlib")
    image = open_blocks(path, chunks=128)
    image.data[:5, :5].compute()  # opens the file in this process
    clone = pickle.loads(pickle.dumps(image.data))
    np.testing.assert_array_equal(clone.compute(), data)


def test_reading_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_blocks(tmp_path / "missing.tif")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="not a Zarr store"):
        open_blocks(tmp_path / "folder")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported file type '.txt'"):
        open_blocks(tmp_path / "notes.txt")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match="TIFF"):
        open_blocks(tmp_path / "bad.tif")
    with pytest.raises(InputError, match="block size"):
        open_blocks(tmp_path / "bad.tif", chunks=0)


def test_huge_compressed_strips_are_refused(tmp_path, rng, monkeypatch):
    path = tmp_path / "onestrip.tif"
    tifffile.imwrite(path, _image(rng, np.uint16), compression="zlib", rowsperstrip=SHAPE[0])
    monkeypatch.setattr(blockio, "MAX_SEGMENT_BYTES", 2**16)
    with pytest.raises(InputError, match="too large to read in blocks; save it tiled"):
        open_blocks(path)


# --------------------------------------------------------------------------- reading Zarr


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_zarr_array(tmp_path, rng, zarr_format):
    data = _image(rng, np.uint16)
    path = tmp_path / "plain.zarr"
    array = zarr.create_array(str(path), shape=SHAPE, chunks=(100, 100), dtype=data.dtype, zarr_format=zarr_format)
    array[:] = data
    assert is_zarr_path(path)
    image = open_blocks(path, chunks=128)
    assert image.pixel_size is None
    assert image.data.chunks[0][0] == 100  # aligned to the stored chunks
    np.testing.assert_array_equal(image.data.compute(), data)


def test_zarr_stack_needs_plane(tmp_path, rng):
    data = rng.integers(0, 255, (2, *SHAPE), dtype=np.uint8)
    path = tmp_path / "stack.zarr"
    zarr.create_array(str(path), shape=data.shape, chunks=(1, 128, 128), dtype=data.dtype, dimension_names=["z", "y", "x"])[:] = data
    with pytest.raises(InputError, match="axis Z"):
        open_blocks(path)
    np.testing.assert_array_equal(open_blocks(path, plane=1).data.compute(), data[1])


def test_ome_zarr_tczyx_with_calibration(tmp_path, rng):
    data = rng.integers(0, 4000, (1, 2, 1, *SHAPE), dtype=np.uint16)
    path = tmp_path / "img.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("s0", shape=data.shape, chunks=(1, 1, 1, 128, 128), dtype=data.dtype)[:] = data
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"
    ]
    transform = [{"type": "scale", "scale": [1.0, 1.0, 2.0, 0.3, 0.2]}]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": transform}]}]
    with pytest.raises(InputError, match="2 channels"):
        open_blocks(path)
    image = open_blocks(path, channel=1, chunks=128)
    assert image.pixel_size == pytest.approx((0.3, 0.2)) and image.unit == "micron"
    np.testing.assert_array_equal(image.data.compute(), data[0, 1, 0])


def test_ome_zarr_05_zarr_format_3(tmp_path, rng):
    data = _image(rng, np.uint8)
    group = zarr.open_group(str(tmp_path / "v05.zarr"), mode="w", zarr_format=3)
    group.create_array("0", shape=SHAPE, chunks=(128, 128), dtype=data.dtype)[:] = data
    axes = [{"name": "y", "type": "space", "unit": "nanometer"}, {"name": "x", "type": "space", "unit": "nanometer"}]
    transform = [{"type": "scale", "scale": [40.0, 40.0]}]
    multiscale = {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transform}]}
    group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    image = open_blocks(tmp_path / "v05.zarr")
    assert (image.pixel_size, image.unit) == ((40.0, 40.0), "nanometer")
    np.testing.assert_array_equal(image.data.compute(), data)


def test_zarr_group_without_multiscales_is_refused(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", shape=(4, 4), dtype="u1")
    with pytest.raises(InputError, match=r"no OME-Zarr 'multiscales' metadata; give the path of one of its arrays \(raw\)"):
        open_blocks(tmp_path / "g.zarr")


def test_is_zarr_path(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    (tmp_path / "v3").mkdir()
    (tmp_path / "v3" / "zarr.json").write_text("{}")
    (tmp_path / "other").mkdir()
    assert is_zarr_path(tmp_path / "x.zarr") and is_zarr_path(tmp_path / "v3")
    assert not is_zarr_path(tmp_path / "other") and not is_zarr_path(tmp_path / "missing.zarr")


# --------------------------------------------------------------------------- writing OME-Zarr


def test_ome_zarr_round_trip_and_metadata(tmp_path, rng):
    labels = _labels(rng)
    path = tmp_path / "labels.zarr"
    result = write_labels_zarr(path, da.from_array(labels, chunks=128), n_objects=40, pixel_size=(0.5, 0.25), unit="micron")
    assert result == path
    attrs = json.loads((path / ".zattrs").read_text())
    (multiscale,) = attrs["multiscales"]
    assert multiscale["version"] == "0.4"
    assert multiscale["axes"] == [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    assert multiscale["datasets"] == [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.25]}]}]
    assert attrs["image-label"]["version"] == "0.4"
    assert json.loads((path / ".zgroup").read_text())["zarr_format"] == 2
    zarray = json.loads((path / "0" / ".zarray").read_text())
    assert zarray["chunks"] == [128, 128] and zarray["dtype"] == "<u2" and zarray["dimension_separator"] == "/"
    assert (path / "0" / "2" / "3").is_file()  # nested chunk keys, last block of a 300 x 410 image

    stored = zarr.open_array(str(path / "0"), mode="r")
    np.testing.assert_array_equal(stored[:], labels)
    back = open_blocks(path, chunks=128)
    assert back.data.dtype == np.uint16 and back.pixel_size == (0.5, 0.25) and back.unit == "micron"
    np.testing.assert_array_equal(back.data.compute(), labels)
    assert _leftovers(tmp_path) == []


def test_ome_zarr_without_calibration_has_unit_scale(tmp_path, rng):
    path = write_labels_zarr(tmp_path / "l.zarr", da.from_array(_labels(rng), chunks=(100, 150)), n_objects=40)
    (multiscale,) = json.loads((path / ".zattrs").read_text())["multiscales"]
    assert multiscale["axes"] == [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    assert multiscale["datasets"][0]["coordinateTransformations"] == [{"type": "scale", "scale": [1.0, 1.0]}]
    assert open_blocks(path).pixel_size is None


@pytest.mark.parametrize(("n_objects", "dtype"), [(65535, np.uint16), (65536, np.uint32)])
def test_label_dtype_follows_n_objects(tmp_path, rng, n_objects, dtype):
    labels = _labels(rng)
    labels[0, 0] = n_objects
    zarr_path = write_labels_zarr(tmp_path / "l.zarr", da.from_array(labels, chunks=128), n_objects=n_objects)
    tiff_path = write_labels_tiff(tmp_path / "l.tif", da.from_array(labels, chunks=128), n_objects=n_objects)
    for path in (zarr_path, tiff_path):
        back = open_blocks(path).data.compute()
        assert back.dtype == dtype
        np.testing.assert_array_equal(back, labels)


def test_labels_are_never_wrapped(tmp_path, rng):
    labels = _labels(rng)
    labels[299, 409] = 65536
    with pytest.raises(InputError, match=r"label 65536 in the block at rows 256:300, columns 384:410 does not fit in uint16"):
        write_labels_zarr(tmp_path / "l.zarr", da.from_array(labels, chunks=128), n_objects=65535)
    with pytest.raises(InputError, match="does not fit in uint16"):
        write_labels_tiff(tmp_path / "l.tif", da.from_array(labels, chunks=128), n_objects=100)
    with pytest.raises(InputError, match="negative"):
        write_labels_zarr(tmp_path / "l.zarr", da.from_array(-labels, chunks=128), n_objects=65535)
    assert list(tmp_path.iterdir()) == []  # no result and no temporary leftovers


def test_bad_label_arguments(tmp_path):
    with pytest.raises(InputError, match="n_objects"):
        write_labels_zarr(tmp_path / "l.zarr", da.zeros((4, 4), dtype=np.uint16), n_objects=-1)
    with pytest.raises(InputError, match="2-D"):
        write_labels_tiff(tmp_path / "l.tif", da.zeros((2, 4, 4), dtype=np.uint16), n_objects=1)
    with pytest.raises(InputError, match="pixel size"):
        write_labels_zarr(tmp_path / "l.zarr", da.zeros((4, 4), dtype=np.uint16), n_objects=1, pixel_size=(0, 1))


def test_zarr_overwrite_rules(tmp_path, rng):
    labels = _labels(rng)
    path = write_labels_zarr(tmp_path / "l.zarr", da.from_array(labels, chunks=128), n_objects=40)
    with pytest.raises(OutputError, match="output exists; use --overwrite"):
        write_labels_zarr(path, da.zeros(SHAPE, dtype=np.uint16, chunks=128), n_objects=0)
    np.testing.assert_array_equal(zarr.open_array(str(path / "0"), mode="r")[:], labels)
    write_labels_zarr(path, da.ones((30, 40), dtype=np.uint16, chunks=16), n_objects=1, overwrite=True)
    assert zarr.open_array(str(path / "0"), mode="r").shape == (30, 40)
    assert not (path / "0" / "2" / "3").exists()  # nothing of the old result is left inside
    assert _leftovers(tmp_path) == []

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("keep me")
    with pytest.raises(OutputError, match="not a Zarr store; refusing to replace it"):
        write_labels_zarr(tmp_path / "mine", da.ones((4, 4), dtype=np.uint16), n_objects=1, overwrite=True)
    assert (tmp_path / "mine" / "thesis.docx").read_text() == "keep me"


def test_zarr_overwrite_without_atomic_exchange(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(labelstore, "_exchange", lambda first, second: False)
    path = write_labels_zarr(tmp_path / "l.zarr", da.zeros(SHAPE, dtype=np.uint16, chunks=128), n_objects=0)
    write_labels_zarr(path, da.from_array(_labels(rng), chunks=128), n_objects=40, overwrite=True)
    np.testing.assert_array_equal(zarr.open_array(str(path / "0"), mode="r")[:], _labels(np.random.default_rng(0)))
    assert _leftovers(tmp_path) == []


def _failing_block(block):
    raise RuntimeError("worker died")


@pytest.mark.parametrize("writer", [write_labels_zarr, write_labels_tiff])
def test_failed_write_leaves_nothing_behind(tmp_path, rng, writer):
    labels = da.from_array(_labels(rng), chunks=128).map_blocks(_failing_block, dtype=np.int64)
    target = tmp_path / ("l.zarr" if writer is write_labels_zarr else "l.tif")
    with pytest.raises(RuntimeError, match="worker died"):
        writer(target, labels, n_objects=40)
    assert list(tmp_path.iterdir()) == []
    # A failed overwrite keeps the previous result.
    writer(target, da.from_array(_labels(rng), chunks=128), n_objects=40)
    with pytest.raises(RuntimeError, match="worker died"):
        writer(target, labels, n_objects=40, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert open_blocks(target).data.compute().max() == 40


class _SlowArray:
    """Stands in for a Zarr array: a write takes a while and creates its folder, as Zarr does."""

    def __init__(self, folder):
        self.folder, self.shape, self.dtype, self.ndim = folder, (4, 4), np.dtype(np.uint8), 2

    def __setitem__(self, key, value):
        time.sleep(0.3)
        (self.folder / "0" / "1").mkdir(parents=True, exist_ok=True)
        (self.folder / "0" / "1" / "2").write_bytes(b"chunk")


def test_cleanup_waits_for_blocks_being_written(tmp_path):
    """A failed write's cleanup must not race a worker still storing a block (it would recreate the folder)."""
    temp = tmp_path / ".l.zarr.1234.part"
    temp.mkdir()
    (temp / labelstore._GUARD).touch()
    target = labelstore._GuardedTarget(_SlowArray(temp), str(temp / labelstore._GUARD))
    writer = threading.Thread(target=target.__setitem__, args=((slice(None),) * 2, 0))
    writer.start()
    time.sleep(0.05)  # the block write is under way
    labelstore._remove_after_writers(temp)
    writer.join()
    assert not temp.exists()
    with pytest.raises(OutputError, match="removed while blocks were being written"):
        target[:, :] = 0  # a block that starts after the cleanup stores nothing
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- writing tiled BigTIFF


def test_tiff_writer_is_tiled_bigtiff_with_resolution(tmp_path, rng):
    labels = _labels(rng)
    labels = np.concatenate([labels, labels, labels])  # 900 rows: two 512-row tile bands, blocks of 128 rows
    blocks = da.from_array(labels, chunks=(128, 300))
    path = write_labels_tiff(tmp_path / "l.tif", blocks, n_objects=40, pixel_size=(0.5, 0.25), unit="micron")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled
        assert (page.tilelength, page.tilewidth) == (512, 512)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.dtype == np.uint16
        xres, yres = page.tags["XResolution"].value, page.tags["YResolution"].value
        assert xres[0] / xres[1] == pytest.approx(4.0) and yres[0] / yres[1] == pytest.approx(2.0)
        np.testing.assert_array_equal(page.asarray(), labels)
    image = read_image(path)
    assert image.pixel_size == pytest.approx((0.5, 0.25)) and image.unit == "micron"
    assert _leftovers(tmp_path) == []


def test_tiff_writer_computes_one_row_of_blocks_at_a_time(tmp_path, rng, monkeypatch):
    labels = da.from_array(_labels(rng), chunks=(100, 205))
    computed = []
    real_compute = da.Array.compute

    def spy(self, **kwargs):
        computed.append(self.shape)
        return real_compute(self, **kwargs)

    monkeypatch.setattr(da.Array, "compute", spy)
    write_labels_tiff(tmp_path / "l.tif", labels, n_objects=40)
    assert computed == [(100, 410)] * 3


def test_tiff_writer_refuses_existing_file(tmp_path):
    path = tmp_path / "l.tif"
    path.write_bytes(b"old")
    with pytest.raises(OutputError, match="output exists"):
        write_labels_tiff(path, da.ones((4, 4), dtype=np.uint16), n_objects=1)
    assert path.read_bytes() == b"old"
    write_labels_tiff(path, da.ones((4, 4), dtype=np.uint16), n_objects=1, overwrite=True)
    np.testing.assert_array_equal(tifffile.imread(path), np.ones((4, 4)))


# --------------------------------------------------------------------------- on a cluster


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


@pytest.mark.slow
def test_blocks_on_a_cluster(tmp_path, rng, client):
    data = _image(rng, np.uint16)
    tiled, plain = tmp_path / "tiled.tif", tmp_path / "plain.tif"
    tifffile.imwrite(tiled, data, tile=(64, 64), compression="zlib", resolution=(2.0, 2.0), metadata={"unit": "um"})
    tifffile.imwrite(plain, data)
    for source in (tiled, plain):
        image = open_blocks(source, chunks=128)
        labels = (image.data > 40000).astype(np.uint16)  # a stand-in for segmentation
        out = write_labels_zarr(tmp_path / f"{source.stem}.zarr", labels, n_objects=1, pixel_size=image.pixel_size, unit=image.unit)
        np.testing.assert_array_equal(zarr.open_array(str(out / "0"), mode="r")[:], data > 40000)
    assert len(client.scheduler_info()["workers"]) == 2
    back = open_blocks(tmp_path / "tiled.zarr", chunks=64)
    assert back.pixel_size == (0.5, 0.5) and back.unit == "micron"
    assert int(back.data.sum().compute()) == int((data > 40000).sum())
    assert int(open_blocks(tiled, chunks=128).data.sum().compute()) == int(data.sum(dtype=np.uint64))
    # An error raised in a worker reaches the caller as the same one-line InputError, leaving nothing behind.
    with pytest.raises(InputError, match="does not fit in uint16"):
        write_labels_zarr(tmp_path / "bad.zarr", open_blocks(tiled, chunks=128).data.astype(np.int64) + 70000, n_objects=5)
    assert not (tmp_path / "bad.zarr").exists() and _leftovers(tmp_path) == []
