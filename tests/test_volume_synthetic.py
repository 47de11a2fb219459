"""The synthetic 3-D nuclei generator: exact labels, anisotropy, touching pairs, illumination, noise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from segtool.errors import InputError
from segtool.volume.synthetic import make_background_stack, make_nuclei_stack

SHAPE = (24, 96, 96)


def _touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        p, q = a[:-1], a[1:]
        m = (p > 0) & (q > 0) & (p != q)
        pairs |= {tuple(sorted(t)) for t in zip(p[m].tolist(), q[m].tolist())}
    return pairs


def test_deterministic_and_seed_dependent():
    a = make_nuclei_stack(SHAPE, n_nuclei=6, seed=3)
    b = make_nuclei_stack(SHAPE, n_nuclei=6, seed=3)
    c = make_nuclei_stack(SHAPE, n_nuclei=6, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_labels_are_consecutive_solid_objects():
    _, labels = make_nuclei_stack(SHAPE, n_nuclei=8, seed=1)
    n = int(labels.max())
    assert n >= 4
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))
    for index in range(1, n + 1):
        # Each nucleus is one 26-connected piece (an ellipsoid, maybe trimmed by a neighbour).
        assert ndi.label(labels == index, structure=np.ones((3, 3, 3)))[1] == 1


def test_z_spacing_flattens_nuclei_along_z():
    """Round in physical space: with planes 3x further apart, a nucleus spans ~3x fewer planes than rows."""
    _, labels = make_nuclei_stack((40, 128, 128), z_spacing=3.0, n_nuclei=6, seed=2, touching=0)
    ratios = []
    for box in ndi.find_objects(labels):
        dz, dy, dx = (s.stop - s.start for s in box)
        if box[0].start > 0 and box[0].stop < labels.shape[0]:  # not cut by the stack's ends
            ratios.append((dy + dx) / 2 / dz)
    assert ratios and 2.0 < np.median(ratios) < 4.5


def test_touching_pairs_exist_only_when_asked():
    _, touching = make_nuclei_stack(SHAPE, n_nuclei=12, seed=0, touching=1.0)
    _, apart = make_nuclei_stack(SHAPE, n_nuclei=12, seed=0, touching=0.0)
    assert len(_touching_pairs(touching)) >= 2
    assert _touching_pairs(apart) == set()


def test_noiseless_image_is_background_plus_blurred_nuclei():
    image, labels = make_nuclei_stack(SHAPE, n_nuclei=5, seed=5, noise=0, dtype="float32")
    background = make_background_stack(SHAPE, seed=5)
    far = ndi.distance_transform_edt(labels == 0) > 8
    np.testing.assert_allclose(image[far], background[far], rtol=1e-4)
    assert (image[labels > 0] > background[labels > 0] + 50).mean() > 0.9


def test_illumination_falls_with_depth_and_across_xy():
    background = make_background_stack((10, 32, 32), seed=0)
    assert background[0].mean() > background[-1].mean() * 1.3
    top = background[0]
    assert (top.max() - 100) / (top.min() - 100) > 1.8  # x-y gradient from 1 to ~0.45
    flat = make_background_stack((10, 32, 32), illumination="none")
    assert float(flat.min()) == float(flat.max()) == 400.0


def test_noise_has_poisson_variance():
    image, labels = make_nuclei_stack((8, 64, 64), n_nuclei=0, seed=0, illumination="none", dtype="float32")
    # Background 300 counts: Poisson variance 300 plus read noise 3**2.
    assert 280 < image.var() < 340
    assert labels.max() == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"shape": (4, 4)}, {"z_spacing": 0}, {"n_nuclei": -1}, {"illumination": "gradient"}, {"touching": 2},
     {"radius_range": (5, 2)}, {"dtype": "int8"}, {"noise": -1}],
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(InputError):
        make_nuclei_stack(**{"shape": SHAPE, **kwargs})
