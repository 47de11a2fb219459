"""Measurements and Fiji ROIs of 3-D label stacks.

:func:`object_table_3d` measures each object's volume, 3-D centroid, bounding
box, equivalent diameter and intensity, with calibrated copies (µm³, µm) when
the voxel size is known. :func:`stack_rois` cuts every object into one ImageJ
ROI per plane, each carrying its Z position, so Fiji's ROI Manager shows it on
its own slice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import ndimage as ndi

from segtool.errors import InputError
from segtool.labels import check_labels
from segtool.measure import check_intensity, summary_row, unit_tag

__all__ = ["object_table_3d", "summary_row_3d", "stack_rois"]


def object_table_3d(
    labels: np.ndarray,
    *,
    image: np.ndarray | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    unit: str | None = None,
) -> dict[str, np.ndarray]:
    """Measure every object of a label stack: one row per label.

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of int
        0 = background.
    image : (Z, Y, X) ndarray, optional
        Intensity stack: adds ``mean_intensity``, ``min_intensity``,
        ``max_intensity``, ``integrated_intensity``.
    voxel_size : (z, y, x) floats, optional
        Physical voxel size: adds ``volume_<u>3``, ``centroid_{z,y,x}_<u>``,
        ``equivalent_diameter_<u>`` (``<u>`` = ``um`` for microns, ``px``
        when the size is in pixel widths).
    unit : str, optional

    Returns
    -------
    dict of str to (n_objects,) ndarray
        ``label, volume`` (voxels), ``centroid_z, centroid_y, centroid_x``,
        ``bbox_min_z .. bbox_max_x`` (max exclusive), ``planes`` (planes the
        object spans), ``equivalent_diameter`` (of a ball of the same voxel
        count, in voxel widths), then intensity and calibrated columns.

    Raises
    ------
    InputError
        For a stack that is not 3-D integer labels or an image of another shape.

    Examples
    --------
    >>> labels = np.zeros((3, 4, 5), int); labels[1, 1:3, 1:4] = 9
    >>> table = object_table_3d(labels, voxel_size=(2.0, 0.5, 0.5), unit="micron")
    >>> int(table["label"][0]), float(table["volume"][0]), float(table["volume_um3"][0]), float(table["centroid_z_um"][0])
    (9, 6.0, 3.0, 2.0)
    """
    labels = check_labels(labels, ndim=3)
    flat = labels.reshape(-1)
    counts = np.bincount(flat.astype(np.intp, copy=False)) if flat.size else np.zeros(1, np.int64)
    present = np.flatnonzero(counts[1:]) + 1
    volume = counts[present].astype(np.float64)
    table: dict[str, np.ndarray] = {"label": present.astype(np.int64), "volume": volume}
    index = present
    # Centroids from per-label coordinate sums, plane by plane (no voxel-sized coordinate arrays).
    sums = np.zeros((3, counts.size))
    ys, xs = np.indices(labels.shape[1:])
    for z in range(labels.shape[0]):
        plane = labels[z].reshape(-1).astype(np.intp, copy=False)
        n = np.bincount(plane, minlength=counts.size)
        sums[0] += n * z
        sums[1] += np.bincount(plane, weights=ys.reshape(-1), minlength=counts.size)
        sums[2] += np.bincount(plane, weights=xs.reshape(-1), minlength=counts.size)
    for axis, name in enumerate("zyx"):
        table[f"centroid_{name}"] = sums[axis, index] / np.maximum(volume, 1)
    boxes = ndi.find_objects(labels)
    bbox = np.array([[s.start for s in boxes[i - 1]] + [s.stop for s in boxes[i - 1]] for i in index], dtype=np.int64)
    bbox = bbox.reshape(-1, 6)
    for k, name in enumerate(("bbox_min_z", "bbox_min_y", "bbox_min_x", "bbox_max_z", "bbox_max_y", "bbox_max_x")):
        table[name] = bbox[:, k]
    table["planes"] = bbox[:, 3] - bbox[:, 0]
    table["equivalent_diameter"] = np.cbrt(6.0 * volume / math.pi)
    if image is not None:
        values = check_intensity(image, labels.shape).astype(np.float64)
        total = np.asarray(ndi.sum_labels(values, labels, index), dtype=np.float64).reshape(-1)
        table["mean_intensity"] = total / np.maximum(volume, 1)
        table["min_intensity"] = np.asarray(ndi.minimum(values, labels, index), dtype=np.float64).reshape(-1)
        table["max_intensity"] = np.asarray(ndi.maximum(values, labels, index), dtype=np.float64).reshape(-1)
        table["integrated_intensity"] = total
    if voxel_size is not None:
        sz, sy, sx = (float(v) for v in voxel_size)
        if not (sz > 0 and sy > 0 and sx > 0):
            raise InputError(f"voxel size must be positive, got {voxel_size}")
        tag = unit_tag(unit, default="px")
        physical = volume * sz * sy * sx
        table[f"volume_{tag}3"] = physical
        for name, size in zip("zyx", (sz, sy, sx)):
            table[f"centroid_{name}_{tag}"] = table[f"centroid_{name}"] * size
        table[f"equivalent_diameter_{tag}"] = np.cbrt(6.0 * physical / math.pi)
    return table


def summary_row_3d(
    labels: np.ndarray,
    table: Mapping[str, np.ndarray],
    *,
    voxel_size: tuple[float, float, float] | None = None,
    unit: str | None = None,
) -> dict[str, float | int]:
    """One line for a stack: objects, mean and median volume, coverage (and calibrated/intensity means).

    Examples
    --------
    >>> labels = np.array([[[1, 1, 0, 2]]])
    >>> summary_row_3d(labels, object_table_3d(labels))
    {'objects': 2, 'mean_volume': 1.5, 'median_volume': 1.5, 'coverage': 0.75}
    """
    return summary_row(labels, table, dims=3)


def stack_rois(labels: np.ndarray) -> list:
    """ImageJ ROIs for a label stack: one per object per plane, with its Z position.

    Each ROI is the object's outline in that plane (as in 2-D, a traced
    polygon, or a composite ROI for holes and several parts), named
    ``<label>-z<plane>`` (planes numbered from 1, as in Fiji) and with
    ``position`` and ``z_position`` set to the plane, so Fiji's ROI Manager
    shows it on that slice of the stack (or hyperstack).

    Examples
    --------
    >>> labels = np.zeros((3, 2, 2), int); labels[1:, 0, 0] = 5
    >>> [(r.name, r.z_position) for r in stack_rois(labels)]
    [('5-z2', 2), ('5-z3', 3)]
    """
    from segtool.export import imagej_rois, label_polygons

    labels = check_labels(labels, ndim=3)
    rois = []
    for z in range(labels.shape[0]):
        if not labels[z].any():
            continue
        for roi in imagej_rois(label_polygons(labels[z])):
            roi.name = f"{roi.name}-z{z + 1}"
            roi.position = z + 1
            roi.z_position = z + 1
            roi.c_position = 1
            roi.t_position = 1
            rois.append(roi)
    rois.sort(key=lambda r: (int(r.name.split("-z")[0]), r.z_position))
    return rois
