"""Reading Z stacks (ImageJ, OME-TIFF, OME-Zarr) and writing calibrated 3-D label TIFFs that Fiji reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from segtool.errors import InputError, OutputError
from segtool.io import read_image
from segtool.volume.io import iter_planes, probe_stack, read_label_volume, read_volume
from segtool.volume.writers import write_label_volume


@pytest.fixture
def stack(rng):
    return rng.integers(0, 1000, (5, 12, 16), dtype=np.uint16)


def test_imagej_hyperstack_is_a_z_stack_with_its_spacing(tmp_path, stack):
    path = tmp_path / "h.tif"
    tifffile.imwrite(path, stack, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"})
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.data, stack)
    assert volume.voxel_size == pytest.approx((1.5, 0.25, 0.25))
    assert volume.unit == "micron"
    assert volume.z_spacing == pytest.approx(6.0)
    # --z-spacing overrides the file's step (in the file's unit).
    assert read_volume(path, z_spacing=0.5).voxel_size == pytest.approx((0.5, 0.25, 0.25))


def test_plane_keeps_its_2d_meaning(tmp_path, stack):
    path = tmp_path / "h.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "ZYX"})
    np.testing.assert_array_equal(read_image(path, plane=3).data, stack[3])


def test_ome_tiff_with_channels(tmp_path, stack):
    path = tmp_path / "o.ome.tif"
    data = np.stack([stack, stack + 1], axis=1)  # Z C Y X
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZCYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2,
                                                      "PhysicalSizeZ": 0.8, "PhysicalSizeXUnit": "µm"})
    info = probe_stack(path)
    assert info is not None and info.n_planes == 5
    with pytest.raises(InputError, match="--channel N"):
        read_volume(path)
    volume = read_volume(path, channel=1)
    np.testing.assert_array_equal(volume.data, stack + 1)
    assert volume.voxel_size == pytest.approx((0.8, 0.2, 0.2)) and volume.unit == "micron"
    _, planes = iter_planes(path, channel=1)
    np.testing.assert_array_equal(np.stack(list(planes)), stack + 1)


def test_rgb_stack_planes_pick_the_channel(tmp_path, rng):
    rgb = rng.integers(0, 255, (4, 10, 12, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb", metadata={"axes": "ZYXS"})
    _, planes = iter_planes(tmp_path / "rgb.tif", channel=1)
    np.testing.assert_array_equal(np.stack(list(planes)), rgb[..., 1])
    np.testing.assert_array_equal(read_volume(tmp_path / "rgb.tif", channel=2).data, rgb[..., 2])


def test_time_series_and_2d_images_are_not_z_stacks(tmp_path, stack):
    tifffile.imwrite(tmp_path / "t.tif", stack, imagej=True, metadata={"axes": "TYX"})
    tifffile.imwrite(tmp_path / "flat.tif", stack[0])
    assert probe_stack(tmp_path / "t.tif") is None
    assert probe_stack(tmp_path / "flat.tif") is None
    assert probe_stack(tmp_path / "missing.tif") is None


def test_unknown_axis_is_z_only_with_a_spacing(tmp_path, stack):
    path = tmp_path / "q.tif"
    tifffile.imwrite(path, stack)  # no axes metadata: tifffile says Q
    assert probe_stack(path) is None
    volume = read_volume(path, z_spacing=3.0)
    assert volume.data.shape == stack.shape and volume.voxel_size == (3.0, 1.0, 1.0) and volume.unit is None


def test_ome_zarr_stack(tmp_path, stack):
    import zarr
    root = tmp_path / "s.ome.zarr"
    group = zarr.open_group(str(root), mode="w", zarr_format=2)
    group.create_array("0", data=stack, chunks=(1, 12, 16))
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "z", "type": "space", "unit": "micrometer"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}],
    }]
    volume = read_volume(root)
    np.testing.assert_array_equal(volume.data, stack)
    assert volume.voxel_size == (2.0, 0.5, 0.5) and volume.unit == "micron"
    _, planes = iter_planes(root)
    np.testing.assert_array_equal(np.stack(list(planes)), stack)


def test_label_tiff_has_the_metadata_fiji_reads(tmp_path):
    labels = np.zeros((7, 10, 12), dtype=np.uint16)
    labels[2:5, 3:6, 4:9] = 3
    path = write_label_volume(tmp_path / "l.tif", labels, voxel_size=(2.0, 0.25, 0.5), unit="micron")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        description = tif.pages[0].description
        # What ImageJ's FileOpener parses: a Z stack of 7 slices, the z step and the unit.
        assert "images=7" in description and "slices=7" in description
        assert "spacing=2.0" in description and "unit=micron" in description
        assert "frames=" not in description and "channels=" not in description
        tags = tif.pages[0].tags
        assert tags["XResolution"].value == (2, 1)  # 2 pixels per micron = 0.5 um wide
        assert tags["YResolution"].value == (4, 1)
        assert tif.pages[0].dtype == np.uint16 and len(tif.pages) == 7
    back = read_label_volume(path)
    np.testing.assert_array_equal(back.data, labels)
    assert back.voxel_size == pytest.approx((2.0, 0.25, 0.5))


def test_uint32_labels_go_to_ome_tiff_with_physical_sizes(tmp_path):
    labels = np.zeros((3, 4, 5), dtype=np.uint32)
    labels[1, 1, 1] = 70000
    path = write_label_volume(tmp_path / "big.tif", labels, voxel_size=(3.0, 0.5, 0.5), unit="micron")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert 'PhysicalSizeZ="3.0"' in tif.ome_metadata and 'SizeZ="3"' in tif.ome_metadata
    back = read_label_volume(path)
    assert back.data.dtype == np.uint32 and int(back.data.max()) == 70000
    assert back.voxel_size == pytest.approx((3.0, 0.5, 0.5))


def test_streamed_planes_equal_a_whole_write(tmp_path, stack):
    whole = write_label_volume(tmp_path / "a.tif", stack, voxel_size=(2, 1, 1))
    streamed = write_label_volume(tmp_path / "b.tif", (p for p in stack), shape=stack.shape, dtype=np.uint16,
                                  voxel_size=(2, 1, 1))
    np.testing.assert_array_equal(tifffile.imread(whole), tifffile.imread(streamed))


def test_no_overwrite_and_no_partial_file(tmp_path, stack):
    path = write_label_volume(tmp_path / "a.tif", stack)
    with pytest.raises(OutputError, match="--overwrite"):
        write_label_volume(path, stack)

    def broken():
        yield stack[0]
        raise RuntimeError("network died")

    with pytest.raises(RuntimeError):
        write_label_volume(tmp_path / "c.tif", broken(), shape=stack.shape, dtype=np.uint16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]
    with pytest.raises(InputError, match="3-D"):
        write_label_volume(tmp_path / "d.tif", stack[0])
    with open(tmp_path / "x.json", "w") as f:  # unrelated file: not a stack
        json.dump({}, f)
    with pytest.raises(InputError, match="not a Z stack"):
        read_volume(tmp_path / "x.json")


@pytest.mark.parametrize("depth", [3, 4])
def test_a_stack_of_three_or_four_planes_in_one_page_is_read_plane_by_plane(tmp_path, depth):
    # tifffile stores a (3 or 4, Y, X) stack as the samples of a single page: pages are then not planes
    stack = np.arange(depth * 20 * 18, dtype=np.float32).reshape(depth, 20, 18)
    path = tmp_path / "few.tif"
    tifffile.imwrite(path, stack, metadata={"axes": "ZYX"})
    info, planes = iter_planes(path)
    planes = list(planes)
    assert info.n_planes == depth and len(planes) == depth
    for plane, expected in zip(planes, stack):
        np.testing.assert_array_equal(plane, expected)
