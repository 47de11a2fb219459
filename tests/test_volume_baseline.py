"""3-D background fit and baseline segmentation of Z stacks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from segtool.errors import InputError
from segtool.metrics import match_labels
from segtool.volume.background import fit_background_3d
from segtool.volume.baseline import relabel_sequential_3d, segment_baseline_3d, split_touching_3d
from segtool.volume.synthetic import make_background_stack, make_nuclei_stack


def _ball(shape, centre, radius, z_spacing=1.0):
    z, y, x = np.indices(shape, dtype=float)
    return ((z - centre[0]) * z_spacing) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def test_background_fit_recovers_a_quadratic_in_z_y_x():
    z, y, x = np.indices((12, 40, 50), dtype=float)
    surface = 300 + 2 * z - 0.5 * y + 0.03 * x * x - 0.1 * z * z + 0.01 * y * x
    fit = fit_background_3d(surface, degree=2, robust=False)
    np.testing.assert_allclose(fit.evaluate(), surface, atol=1e-3)


def test_robust_fit_ignores_bright_objects(rng):
    shape = (16, 64, 64)
    z, y, x = np.indices(shape, dtype=float)
    surface = 300 - 4 * z + 0.8 * y + 0.01 * (x - 20) ** 2
    image = surface + rng.normal(0, 5, shape)
    for centre in [(4, 16, 16), (8, 40, 30), (12, 20, 50)]:
        image[_ball(shape, centre, 8)] += 500
    robust = fit_background_3d(image, degree=2)
    plain = fit_background_3d(image, degree=2, robust=False)
    assert np.abs(robust.evaluate() - surface).max() < 2.0
    assert np.abs(plain.evaluate() - surface).max() > 10.0


def test_bad_stack_is_refused():
    with pytest.raises(InputError, match="3-D"):
        fit_background_3d(np.zeros((4, 4)))
    with pytest.raises(InputError, match="degree"):
        fit_background_3d(np.zeros((2, 4, 4)), degree=11)
    with pytest.raises(InputError, match="NaN"):
        segment_baseline_3d(np.full((3, 8, 8), np.nan))


@pytest.mark.parametrize("stack", [np.zeros((3, 8, 8), np.uint16), np.full((3, 8, 8), 7.0),
                                   np.add.outer(np.arange(3.0), np.ones((8, 8)))])
def test_empty_stack_is_a_result_with_no_objects(stack):
    result = segment_baseline_3d(stack, degree=1)
    assert result.labels.shape == stack.shape and result.labels.max() == 0 and result.labels.dtype == np.uint16


def test_split_respects_anisotropy():
    """Two balls (round in physical space) touching along z, planes 2 apart, are split into an upper and a lower one."""
    shape, zs = (20, 24, 24), 2.0
    two = _ball(shape, (5, 12, 12), 7, zs) | _ball(shape, (11.5, 12, 12), 7, zs)
    assert ndi.label(two)[1] == 1
    labels = split_touching_3d(two, z_spacing=zs)
    assert labels.max() == 2
    top, bottom = labels[5, 12, 12], labels[12, 12, 12]
    assert top != bottom and top > 0 and bottom > 0


def test_min_size_counts_voxels_in_3d():
    stack = np.zeros((6, 20, 20), dtype=np.float32)
    stack[1:5, 2:6, 2:6] = 100  # 64 voxels
    stack[2:4, 12:15, 12:15] = 100  # 18 voxels
    labels = segment_baseline_3d(stack, degree=0, min_size=20).labels
    assert labels.max() == 1 and (labels > 0).sum() == 64
    assert segment_baseline_3d(stack, degree=0, min_size=18).labels.max() == 2


def test_objects_connect_across_planes():
    """A diagonal chain touching only at corners between planes is one 26-connected object."""
    stack = np.zeros((4, 10, 10), dtype=np.float32)
    for z in range(4):
        stack[z, 2 + z, 2 + z] = 100
    assert segment_baseline_3d(stack, degree=0, min_size=1).labels.max() == 1


def test_relabel_sequential_3d_goes_to_uint32_above_65535():
    labels = np.arange(70000, dtype=np.uint32).reshape(7, 100, 100)
    out = relabel_sequential_3d(labels)
    assert out.dtype == np.uint32 and int(out.max()) == 69999


def test_fill_holes_in_3d():
    stack = np.zeros((9, 12, 12), dtype=np.float32)
    stack[1:8, 1:10, 1:10] = 100
    stack[3:6, 4:7, 4:7] = 0  # a cavity closed on all six sides
    open_ = segment_baseline_3d(stack, degree=0, min_size=1).labels
    filled = segment_baseline_3d(stack, degree=0, min_size=1, fill_holes=True).labels
    assert open_[4, 5, 5] == 0 and filled[4, 5, 5] == 1


def test_synthetic_stack_small_is_segmented():
    """A fast stand-in for the acceptance bench (bench/accuracy_volume.py runs 64x256x256)."""
    image, truth = make_nuclei_stack((32, 128, 128), z_spacing=2.0, n_nuclei=12, seed=7)
    result = segment_baseline_3d(image, z_spacing=2.0, split=True, smooth=1.0)
    f1 = float(match_labels(truth, result.labels, thresholds=[0.5]).f1[0])
    assert f1 >= 0.8


@pytest.mark.slow
def test_acceptance_64x256x256_split_f1():
    """Issue #27: baseline --split F1@0.5 >= 0.85 (3-D IoU) on 64x256x256, z spacing 2, uneven light."""
    total = None
    for seed in (0, 1):
        image, truth = make_nuclei_stack((64, 256, 256), z_spacing=2.0, seed=seed)
        labels = segment_baseline_3d(image, z_spacing=2.0, split=True).labels  # the defaults of baseline --split
        counts = match_labels(truth, labels, thresholds=[0.5])
        total = counts if total is None else total + counts
    assert float(total.f1[0]) >= 0.85
