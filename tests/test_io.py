"""Reading and writing images: dtypes, axes, calibration, labels, atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from segtool.errors import InputError, OutputError
from segtool.io import (
    atomic_output,
    read_image,
    read_labels,
    staged_output,
    write_float,
    write_labels,
    write_png,
)
from segtool.labels import to_label_dtype


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.uint32, np.float32, np.float64])
def test_read_tiff_keeps_dtype_and_values(tmp_path, rng, dtype):
    data = (rng.random((17, 23)) * 200).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", data)
    image = read_image(tmp_path / "a.tif")
    assert image.data.dtype == dtype
    np.testing.assert_array_equal(image.data, data)


def test_read_png_and_jpeg(tmp_path, rng):
    from PIL import Image as PILImage

    gray = (rng.random((12, 9)) * 255).astype(np.uint8)
    PILImage.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png").data, gray)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 2] = 90
    PILImage.fromarray(rgb).save(tmp_path / "c.jpg", quality=100)
    out = read_image(tmp_path / "c.jpg").data
    assert out.shape == (8, 8)
    assert abs(float(out.mean()) - 30) < 2  # RGB default: mean of the three channels


@pytest.mark.parametrize("count", [5, 65535, 65536, 100_000])
def test_labels_round_trip_exact(tmp_path, count):
    labels = np.arange(count, dtype=np.int64).reshape(1, -1) + 1
    labels = np.pad(labels, ((1, 1), (0, 0)))
    path = write_labels(tmp_path / "l.tif", labels)
    back = read_labels(path).data
    assert back.dtype == (np.uint16 if count <= 65535 else np.uint32)
    np.testing.assert_array_equal(back, labels)
    assert back.max() == count  # never wrapped


def test_uint16_labels_are_imagej_and_zlib(tmp_path):
    labels = np.zeros((20, 30), np.int32)
    labels[2:5, 2:5] = 7
    write_labels(tmp_path / "l.tif", labels, pixel_size=(0.5, 0.25), unit="micron")
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        assert tif.is_imagej
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert tif.pages[0].shape == (20, 30)
        assert tif.imagej_metadata["unit"] == "micron"


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_calibration_carried_through(tmp_path, dtype):
    src = tmp_path / "cal.tif"
    tifffile.imwrite(src, np.ones((10, 10), np.uint16), imagej=True, resolution=(1 / 0.325, 1 / 0.65), metadata={"unit": "micron"})
    image = read_image(src)
    assert image.pixel_size == pytest.approx((0.65, 0.325))
    assert image.unit == "micron"
    labels = np.zeros((10, 10), dtype)
    labels[0, 0] = 70000 if dtype == np.uint32 else 3
    out = write_labels(tmp_path / "out.tif", labels, pixel_size=image.pixel_size, unit=image.unit)
    again = read_labels(out)
    assert again.pixel_size == pytest.approx((0.65, 0.325))
    assert again.unit == "micron"


def test_uncalibrated_file_has_no_pixel_size(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.ones((4, 4), np.uint8))
    assert read_image(tmp_path / "a.tif").pixel_size is None


def test_float_output_is_float32(tmp_path):
    write_float(tmp_path / "f.tif", np.linspace(0, 1, 12, dtype=np.float64).reshape(3, 4))
    assert tifffile.imread(tmp_path / "f.tif").dtype == np.float32


def test_stack_needs_plane(tmp_path):
    stack = np.stack([np.full((6, 7), i, np.uint16) for i in range(4)])
    tifffile.imwrite(tmp_path / "z.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(InputError, match=r"--plane N \(0..3\)"):
        read_image(tmp_path / "z.tif")
    assert read_image(tmp_path / "z.tif", plane=2).data.max() == 2
    with pytest.raises(InputError, match="out of range"):
        read_image(tmp_path / "z.tif", plane=4)


def test_multichannel_needs_channel_but_rgb_has_default(tmp_path):
    channels = np.stack([np.full((6, 7), 10 * i, np.uint16) for i in range(3)])
    tifffile.imwrite(tmp_path / "c.tif", channels, imagej=True, metadata={"axes": "CYX"})
    with pytest.raises(InputError, match="--channel"):
        read_image(tmp_path / "c.tif")
    assert read_image(tmp_path / "c.tif", channel=2).data.max() == 20
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[..., 0] = 30
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    assert read_image(tmp_path / "rgb.tif").data.max() == pytest.approx(10)
    assert read_image(tmp_path / "rgb.tif", channel=0).data.max() == 30


def test_singleton_axes_are_dropped(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.ones((1, 1, 5, 6), np.uint8), imagej=True, metadata={"axes": "TZYX"})
    assert read_image(tmp_path / "s.tif").data.shape == (5, 6)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"not a tiff at all", "cannot read TIFF"), (b"II*\x00\x08\x00\x00\x00\xff\xff", "cannot read TIFF")],
)
def test_bad_files_raise_input_error(tmp_path, content, message):
    path = tmp_path / "bad.tif"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_image(path)


def test_truncated_tiff(tmp_path):
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    tifffile.imwrite(tmp_path / "full.tif", data, compression="zlib")
    raw = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError):
        read_image(tmp_path / "cut.tif")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.tif")
    (tmp_path / "dir.tif").mkdir()
    with pytest.raises(InputError, match="directory"):
        read_image(tmp_path / "dir.tif")


def test_huge_header_is_refused_without_allocating(tmp_path):
    # A valid header that claims a 200000 x 200000 uint16 image backed by almost no data.
    with tifffile.TiffWriter(tmp_path / "huge.tif", bigtiff=True) as tif:
        tif.write(shape=(200_000, 200_000), dtype=np.uint16, compression=None)
    with pytest.raises(InputError, match="GiB"):
        read_image(tmp_path / "huge.tif")


@pytest.mark.parametrize("bad", [np.array([[0, -1]]), np.array([[0.5, 1.0]]), np.array([[np.nan, 1.0]])])
def test_label_validation(bad):
    with pytest.raises(InputError):
        to_label_dtype(bad)


def test_atomic_output_refuses_overwrite_and_cleans_up(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OutputError, match="--overwrite"):
        with atomic_output(target):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output(target, overwrite=True) as temp:
            temp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_output(target, overwrite=True) as temp:
        temp.write_text("new")
    assert target.read_text() == "new"


def test_atomic_output_disk_full_becomes_output_error(tmp_path):
    with pytest.raises(OutputError, match="No space left"):
        with atomic_output(tmp_path / "x.bin") as temp:
            temp.write_bytes(b"partial")
            raise OSError(28, os.strerror(28))
    assert list(tmp_path.iterdir()) == []


def test_staged_output_publishes_or_discards_a_hidden_sibling(tmp_path):
    seen = []
    target = tmp_path / "sub" / "out.zarr"
    with staged_output(target, publish=lambda t: seen.append(("publish", t)), discard=seen.append) as temp:
        assert temp.parent == target.parent and temp.name.startswith(".out.zarr.") and temp.name.endswith(".part")
    assert seen == [("publish", temp)]
    seen.clear()
    with pytest.raises(OutputError, match=r"out\.zarr: cannot write: Permission denied"):
        with staged_output(target, publish=seen.append, discard=lambda t: seen.append(("discard", t))) as temp:
            raise PermissionError(13, "Permission denied")
    assert seen == [("discard", temp)]


def test_unwritable_folder(tmp_path):
    if os.geteuid() == 0:
        # root ignores permission bits; a file in place of the folder fails for everyone.
        (tmp_path / "blocked").write_text("")
        target = tmp_path / "blocked" / "x.png"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        target = tmp_path / "ro" / "x.png"
    with pytest.raises(OutputError):
        write_png(target, np.zeros((3, 3), np.uint8))


def test_write_png_round_trip(tmp_path):
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[1, 2] = (255, 0, 10)
    write_png(tmp_path / "p.png", rgb)
    from PIL import Image as PILImage

    np.testing.assert_array_equal(np.asarray(PILImage.open(tmp_path / "p.png")), rgb)


def test_sample_data_reads(sample_images, sample_masks):
    for image_path, mask_path in zip(sample_images, sample_masks):
        image = read_image(image_path)
        mask = read_labels(mask_path)
        assert image.data.ndim == 2 and image.data.dtype == np.uint8
        assert mask.data.shape == image.data.shape
        assert mask.data.max() > 0
