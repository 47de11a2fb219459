"""One set of calibration rules for 2-D images and Z stacks (segtool.calibration)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from segtool.calibration import ngff_calibration, normalise_unit, tiff_z_spacing
from segtool.io import read_image
from segtool.volume.io import probe_stack, read_volume


@pytest.mark.parametrize("spelling", ["um", "µm", "μm", "\\u00B5m", "micrometer", "micrometre", "microns", "micron", " µm "])
def test_micrometres_in_any_spelling_are_micron(spelling):
    assert normalise_unit(spelling) == "micron"


def test_other_units_are_kept():
    assert [normalise_unit(u) for u in ("nm", "cm", "inch", " mm")] == ["nm", "cm", "inch", "mm"]


def test_a_stack_calibrated_by_resolution_tags_alone_reads_as_a_2d_image_does(tmp_path):
    # Changed by the one reader: the 3-D reader used to ignore resolution tags without an ImageJ unit
    # (pixel_size None, voxel size in pixel widths); it now reads them as read_image always has.
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8), metadata={"axes": "ZYX"}, resolution=(2.0, 4.0),
                     resolutionunit="CENTIMETER")
    info = probe_stack(path, z_spacing=3.0)
    assert (info.pixel_size, info.unit) == ((0.25, 0.5), "cm")
    volume = read_volume(path, z_spacing=3.0)
    assert (volume.voxel_size, volume.unit) == ((3.0, 0.25, 0.5), "cm")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tifffile.imwrite(tmp_path / "plane.tif", page.asarray(), resolution=(2.0, 4.0), resolutionunit="CENTIMETER")
    plane = read_image(tmp_path / "plane.tif")
    assert (plane.pixel_size, plane.unit) == (info.pixel_size, info.unit)


def test_the_british_spelling_is_micron_in_2d_as_in_3d(tmp_path):
    # Changed by the one reader: read_image used to report "micrometre" as written; the 3-D reader said "micron".
    tifffile.imwrite(tmp_path / "plane.tif", np.zeros((8, 8), np.uint8), imagej=True, metadata={"unit": "micrometre"},
                     resolution=(4.0, 4.0))
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 8, 8), np.uint8), imagej=True,
                     metadata={"axes": "ZYX", "unit": "micrometre", "spacing": 2.5}, resolution=(4.0, 4.0))
    plane = read_image(tmp_path / "plane.tif")
    stack = read_volume(tmp_path / "stack.tif")
    assert (plane.pixel_size, plane.unit) == ((0.25, 0.25), "micron")
    assert (stack.voxel_size, stack.unit) == ((2.5, 0.25, 0.25), "micron")


def test_default_screen_dpi_is_no_calibration_in_3d_either(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8), metadata={"axes": "ZYX"}, resolution=(72.0, 72.0),
                     resolutionunit="INCH")
    info = probe_stack(path)
    assert (info.pixel_size, info.unit, info.voxel_size) == (None, None, None)


@pytest.mark.parametrize(("spacing", "expected"), [(2.5, 2.5), (0.0, None), (float("nan"), None), ("x", None)])
def test_imagej_z_spacing(tmp_path, spacing, expected):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 4), np.uint8), imagej=True, metadata={"axes": "ZYX", "spacing": spacing})
    with tifffile.TiffFile(path) as tif:
        assert tiff_z_spacing(tif) == expected


def test_ome_z_spacing_and_xy_size(tmp_path):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, np.zeros((5, 8, 8), np.uint8), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.25,
                               "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"})
    with tifffile.TiffFile(path) as tif:
        assert tiff_z_spacing(tif) == 2.0
    volume = read_volume(path)
    assert (volume.voxel_size, volume.unit) == ((2.0, 0.5, 0.25), "micron")


# --------------------------------------------------------------------------- OME-Zarr (OME-NGFF): one reader


def _axes(units):
    return [{"name": n, "type": "space", **({"unit": u} if u else {})} for n, u in zip("zyx", units)]


def _scale(*values):
    return {"coordinateTransformations": [{"type": "scale", "scale": list(values)}]}


def test_ngff_scale_is_the_level_times_the_multiscale():
    multiscale = {"axes": _axes(["micrometer"] * 3), **_scale(2.0, 4.0, 4.0)}
    assert ngff_calibration(multiscale, _scale(1.5, 0.125, 0.25), "ZYX") == ((0.5, 1.0), 3.0, "micron")


@pytest.mark.parametrize(
    ("units", "dataset", "expected"),
    [
        ([None, None, None], _scale(2.0, 1.0, 1.0), (None, 2.0, None)),  # identity x-y scale without a unit
        ([None, "nanometer", "nanometer"], _scale(1.0, 1.0, 1.0), ((1.0, 1.0), 1.0, "nanometer")),  # a unit: kept
        (["micrometer", "micrometer", "nanometer"], _scale(1.0, 0.5, 0.5), ((0.5, 0.5), 1.0, None)),  # y, x differ
        (["micrometer"] * 3, _scale(1.0, 0.5), (None, None, None)),  # wrong length: no scale found
        (["micrometer"] * 3, _scale(1.0, 0.0, 0.5), (None, 1.0, None)),  # not a positive size
        (["micrometer"] * 3, _scale(float("nan"), 0.5, 0.5), ((0.5, 0.5), None, "micron")),
    ],
)
def test_ngff_calibration_rules(units, dataset, expected):
    assert ngff_calibration({"axes": _axes(units)}, dataset, "ZYX") == expected


def test_ngff_without_one_y_and_one_x_axis_has_no_calibration():
    assert ngff_calibration({}, _scale(1.0, 0.5, 0.5), "ZQQ") == (None, None, None)


@pytest.mark.parametrize(
    ("multiscale_scale", "units"),
    [
        (None, ["micrometer"] * 3),
        ([1.0, 2.0, 2.0], ["micrometer"] * 3),  # a multiscale-level scale: the Z-stack reader used to ignore it
        (None, [None, None, "micrometer"]),  # a unit on x alone: the Z-stack reader used to report it
    ],
)
def test_a_zarr_stack_is_calibrated_as_its_dask_blocks_are(tmp_path, multiscale_scale, units):
    import zarr
    from segtool.distributed.blockio import open_blocks

    root = tmp_path / "s.ome.zarr"
    group = zarr.open_group(str(root), mode="w", zarr_format=2)
    group.create_array("0", data=np.zeros((3, 8, 8), np.uint8), chunks=(1, 8, 8))
    multiscale = {"version": "0.4", "axes": _axes(units), "datasets": [{"path": "0", **_scale(2.0, 0.5, 0.25)}]}
    if multiscale_scale:
        multiscale.update(_scale(*multiscale_scale))
    group.attrs["multiscales"] = [multiscale]
    info = probe_stack(root)
    plane = open_blocks(root, plane=1)
    assert (info.pixel_size, info.unit) == (plane.pixel_size, plane.unit)
    factor = 1.0 if multiscale_scale is None else 2.0
    assert info.pixel_size == (0.5 * factor, 0.25 * factor)
    assert info.unit == ("micron" if units[1] else None)


@pytest.mark.parametrize(
    "axes, expected_stack",
    [
        ([{"name": "z", "type": "space"}, {"name": "y"}, {"name": "x"}], True),
        # "zz" used to read as Z in the stack reader (first letter) but as unknown in the Dask block reader
        ([{"name": "zz", "type": "space"}, {"name": "y"}, {"name": "x"}], False),
        # "time" used to read as T in the stack reader and as unknown in the block reader
        ([{"name": "time"}, {"name": "y"}, {"name": "x"}], False),
    ],
)
def test_zarr_axes_read_alike_as_a_stack_and_as_dask_blocks(tmp_path, axes, expected_stack):
    import zarr
    from segtool.calibration import ngff_axes
    from segtool.distributed.blockio import open_blocks

    root = tmp_path / "s.ome.zarr"
    group = zarr.open_group(str(root), mode="w", zarr_format=2)
    group.create_array("0", data=np.zeros((3, 8, 8), np.uint8), chunks=(1, 8, 8))
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0", **_scale(1.0, 1.0, 1.0)}]}]
    info = probe_stack(root)
    assert (info is not None) == expected_stack
    if expected_stack:
        assert info.axes == "ZYX" and open_blocks(root, plane=1).data.shape == (8, 8)
    else:
        # not a Z stack: the block reader refuses the unknown or time axis without --plane, and reads a plane with it
        assert ngff_axes(axes)[0] in "QT"
        assert open_blocks(root, plane=2).data.shape == (8, 8)
