"""The one label-image check, and that metrics, export and the Dask writers use it."""

from __future__ import annotations

import numpy as np
import pytest

from segtool.errors import InputError
from segtool.labels import check_labels, label_dtype, to_label_dtype


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


def test_training_masks_are_checked_by_the_one_check_and_named():
    from segtool.model.config import UNetConfig
    from segtool.train.dataset import prepare_sample

    config = UNetConfig(depth=1, patch_size=4)
    with pytest.raises(InputError, match=r"^a\.tif: mask label image has negative values \(min -1\)$"):
        prepare_sample(np.zeros((4, 4)), np.full((4, 4), -1), config, name="a.tif")
    with pytest.raises(InputError, match=r"^a\.tif: mask label image has dtype float32; expected integer labels$"):
        prepare_sample(np.zeros((4, 4)), np.zeros((4, 4), np.float32), config, name="a.tif")


def test_targets_and_3d_measurements_use_the_one_check():
    from segtool.train.targets import three_class_target
    from segtool.volume.measure import object_table_3d

    with pytest.raises(InputError, match=r"^label image must be 2-D, got shape \(4,\)$"):
        three_class_target(np.zeros(4, int))
    with pytest.raises(InputError, match=r"^label image must be 3-D, got shape \(4, 4\)$"):
        object_table_3d(np.zeros((4, 4), int))
    with pytest.raises(InputError, match=r"^label image has negative values \(min -2\)$"):
        object_table_3d(np.full((2, 2, 2), -2))


def test_the_napari_writer_names_its_file(tmp_path):
    from segtool.napari.writer import write_labels

    with pytest.raises(InputError, match=r"x\.tif: label image has dtype float64; expected integer labels$"):
        write_labels(str(tmp_path / "x.tif"), np.zeros((3, 3)), {})
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- the one dtype rule


@pytest.mark.parametrize(("largest", "dtype"), [(0, np.uint16), (65535, np.uint16), (65536, np.uint32), (2**32 - 1, np.uint32)])
def test_labels_are_uint16_or_uint32_above_65535(largest, dtype):
    assert label_dtype(largest) == np.dtype(dtype)
    assert to_label_dtype(np.array([[0, largest]], np.int64)).dtype == np.dtype(dtype)


def test_labels_beyond_uint32_are_refused_not_wrapped():
    with pytest.raises(InputError, match=r"^label 4294967296 does not fit in uint32$"):
        label_dtype(2**32)
    with pytest.raises(InputError, match=r"^label 4294967296 does not fit in uint32$"):
        to_label_dtype(np.array([[0, 2**32]], np.int64))


def test_to_label_dtype_keeps_a_uint16_image_and_converts_integer_floats():
    labels = np.array([[0, 7]], np.uint16)
    assert to_label_dtype(labels) is labels
    out = to_label_dtype(np.array([[0.0, 70000.0]], np.float32))
    assert out.dtype == np.uint32 and out.tolist() == [[0, 70000]]
    assert to_label_dtype(np.array([[True, False]])).tolist() == [[1, 0]]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.zeros((2, 2), np.complex64), "label image has dtype complex64; expected integers"),
        (np.zeros((0, 2), np.uint8), "label image is empty"),
        (np.array([[0.5, 1.0]]), "label image has fractional values; expected integer object labels (is this an intensity image?)"),
        (np.array([[np.inf, 1.0]]), "label image contains NaN or infinite values"),
        (np.array([[0, -3]]), "label image has negative values (min -3); labels must be 0 (background) or positive"),
    ],
)
def test_to_label_dtype_refuses_what_is_not_labels(labels, message):
    with pytest.raises(InputError) as err:
        to_label_dtype(labels)
    assert str(err.value) == message


def test_renumbered_outputs_narrow_to_uint16_when_they_can():
    from segtool.baseline import segment_baseline
    from segtool.volume.stitch import stitch_planes

    planes = np.zeros((2, 4, 4), np.uint32)
    planes[:, 1:3, 1:3] = 70000
    stitched = stitch_planes(planes)
    assert stitched.dtype == np.uint16 and stitched.max() == 1
    image = np.zeros((32, 32), np.float32)
    image[8:16, 8:16] = 100.0
    assert segment_baseline(image, min_size=4).labels.dtype == np.uint16
