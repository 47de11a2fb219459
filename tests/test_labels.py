"""The one label-image check, and that metrics, export and the Dask writers use it."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import segtool.labels
from segtool.errors import InputError
from segtool.labels import check_labels


def test_integer_labels_come_back_unchanged_without_a_copy():
    labels = np.array([[0, 1], [2, 0]], dtype=np.int16)
    out = check_labels(labels)
    assert out is labels


def test_a_boolean_mask_is_viewed_as_uint8():
    mask = np.array([[True, False], [False, True]])
    out = check_labels(mask)
    assert out.dtype == np.uint8
    assert out.tolist() == [[1, 0], [0, 1]]
    assert np.shares_memory(out, mask)


def test_lists_are_converted():
    assert isinstance(check_labels([[0, 3]]), np.ndarray)


@pytest.mark.parametrize(
    ("labels", "kwargs", "message"),
    [
        (np.zeros((2, 2), np.float32), {}, "label image has dtype float32; expected integer labels"),
        (np.array([[0, -4]]), {}, "label image has negative values (min -4)"),
        (np.array([[0, -4]]), {"role": "ground truth"}, "ground truth label image has negative values (min -4)"),
        (np.zeros((2, 2), np.float64), {"role": "predicted"},
         "predicted label image has dtype float64; expected integer labels"),
        (np.zeros((2, 2, 2), np.uint8), {"ndim": 2}, "label image must be 2-D, got shape (2, 2, 2)"),
        (np.zeros((0, 3), np.uint8), {"allow_empty": False}, "label image is empty"),
        (np.zeros((2, 2), np.complex64), {"allow_float": True}, "label image has dtype complex64; expected integers"),
    ],
)
def test_bad_label_images_are_named_in_one_line(labels, kwargs, message):
    with pytest.raises(InputError) as err:
        check_labels(labels, **kwargs)
    assert str(err.value) == message


def test_the_dimension_check_comes_before_the_dtype_check():
    with pytest.raises(InputError, match="must be 2-D"):
        check_labels(np.zeros((2, 2, 2), np.float32), ndim=2)


def test_an_empty_image_is_a_label_image_unless_refused():
    assert check_labels(np.zeros((0, 5), np.uint16)).shape == (0, 5)


def test_without_value_checks_floats_and_negatives_pass_and_the_object_is_returned_as_is():
    class Lazy:
        """Shape and dtype only, like a Dask array: asking for pixels fails."""

        shape = (3, 4)
        ndim = 2
        dtype = np.dtype(np.float32)

        def __array__(self, *args, **kwargs):
            raise AssertionError("pixels were read")

    lazy = Lazy()
    assert check_labels(lazy, ndim=2, allow_float=True, check_values=False) is lazy
    negative = np.array([[-1.0, 2.0]])
    assert check_labels(negative, allow_float=True, check_values=False) is negative


def test_the_docstring_examples_hold():
    result = doctest.testmod(segtool.labels, extraglobs={"np": np})
    assert result.attempted >= 3
    assert result.failed == 0


# ----------------------------------------------------------------------------- the callers keep their words


def test_metrics_names_which_image_is_bad():
    from segtool.metrics import iou_pairs

    good = np.zeros((4, 4), np.uint8)
    with pytest.raises(InputError, match=r"^ground truth label image has negative values \(min -1\)$"):
        iou_pairs(np.full((4, 4), -1, np.int8), good)
    with pytest.raises(InputError, match=r"^predicted label image has dtype float32; expected integer labels$"):
        iou_pairs(good, good.astype(np.float32))


def test_export_wants_two_dimensions():
    from segtool.export import label_polygons

    with pytest.raises(InputError, match=r"^label image must be 2-D, got shape \(1, 4, 4\)$"):
        label_polygons(np.zeros((1, 4, 4), np.uint8))


def test_the_dask_writer_refuses_an_empty_image_before_computing(tmp_path):
    from segtool.distributed.labelstore import write_labels_tiff

    with pytest.raises(InputError, match=r"^label image is empty$"):
        write_labels_tiff(tmp_path / "x.tif", np.zeros((0, 4), np.uint16), n_objects=0)
    with pytest.raises(InputError, match=r"^label image has dtype complex64; expected integers$"):
        write_labels_tiff(tmp_path / "x.tif", np.zeros((4, 4), np.complex64), n_objects=0)
    assert not list(tmp_path.iterdir())
