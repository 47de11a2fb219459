"""One check of label images, and one rule for the dtype they are stored in.

A label image holds one non-negative integer per pixel: 0 for background,
``k`` for the pixels of object ``k``. :func:`check_labels` decides whether an
array is one, with the same words wherever a label image comes in, so
``evaluate``, ``export``, training, 3-D measurements and the big-image
writers reject the same input for the same reason.

Labels are stored as uint16, or uint32 when a label exceeds 65535
(:func:`label_dtype`); :func:`to_label_dtype` checks an array read from a file
(integer-valued floats allowed) and converts it by that rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segtool.errors import InputError

__all__ = ["check_labels", "label_dtype", "to_label_dtype"]

_UINT16_MAX = int(np.iinfo(np.uint16).max)
_UINT32_MAX = int(np.iinfo(np.uint32).max)


def check_labels(
    labels: Any,
    *,
    role: str = "",
    ndim: int | None = None,
    allow_empty: bool = True,
    allow_float: bool = False,
    check_values: bool = True,
) -> Any:
    """Check that an array is a label image and return it ready to use.

    Parameters
    ----------
    labels : array_like or dask.array.Array
        The label image. With ``check_values=True`` it is converted with
        :func:`numpy.asarray`; otherwise it is returned as given (a lazy Dask
        array stays lazy).
    role : str, optional
        Which label image this is, put in front of ``"label image"`` in
        messages (``"ground truth"`` gives "ground truth label image has ...").
    ndim : int, optional
        Number of dimensions required; any number when None.
    allow_empty : bool, optional
        Whether an image with a zero-length axis is accepted.
    allow_float : bool, optional
        Accept floating-point (and boolean) dtypes too, for callers that check
        the values themselves (integer-valued floats are labels there).
    check_values : bool, optional
        Look at the values now: reject negative labels and view a boolean mask
        as uint8 (object 1 on background 0). False checks only shape and dtype,
        which needs no pixels; the caller then checks values itself.

    Returns
    -------
    labels : ndarray or the input
        The label image: a NumPy array (boolean viewed as uint8, no copy) when
        ``check_values`` is True, else ``labels`` unchanged.

    Raises
    ------
    InputError
        If the image has the wrong number of dimensions, is empty when that is
        not allowed, has a non-integer dtype, or has negative values.

    Examples
    --------
    >>> check_labels(np.array([[0, 2], [1, 0]], dtype=np.int32)).dtype
    dtype('int32')
    >>> check_labels(np.array([[True, False]])).dtype
    dtype('uint8')
    >>> check_labels(np.array([[0, -1]]), role="predicted")
    Traceback (most recent call last):
    ...
    segtool.errors.InputError: predicted label image has negative values (min -1)
    """
    what = f"{role} label image" if role else "label image"
    array = np.asarray(labels) if check_values else labels
    if ndim is not None and array.ndim != ndim:
        raise InputError(f"{what} must be {ndim}-D, got shape {array.shape}")
    if not allow_empty and 0 in array.shape:
        raise InputError(f"{what} is empty")
    if allow_float:
        # Floats are accepted on the promise that the caller checks their values;
        # the message says "integers" because fractional values are refused later.
        if array.dtype.kind not in "biuf":
            raise InputError(f"{what} has dtype {array.dtype}; expected integers")
    elif array.dtype != bool and array.dtype.kind not in "iu":
        raise InputError(f"{what} has dtype {array.dtype}; expected integer labels")
    if not check_values:
        return array
    if array.dtype == bool:
        return array.view(np.uint8)
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise InputError(f"{what} has negative values (min {array.min()})")
    return array


def label_dtype(max_label: int | float) -> np.dtype:
    """The dtype labels up to ``max_label`` are stored in: uint16, or uint32 above 65535.

    Parameters
    ----------
    max_label : int or float
        The largest label (or the number of objects, when they are numbered
        1..N). A float must be integer-valued.

    Returns
    -------
    numpy.dtype
        uint16 up to 65535, uint32 up to 4294967295.

    Raises
    ------
    InputError
        If ``max_label`` does not fit in uint32.

    Examples
    --------
    >>> label_dtype(65535), label_dtype(65536)
    (dtype('uint16'), dtype('uint32'))
    >>> label_dtype(2**32)
    Traceback (most recent call last):
    ...
    segtool.errors.InputError: label 4294967296 does not fit in uint32
    """
    if max_label > _UINT32_MAX:
        raise InputError(f"label {max_label} does not fit in uint32")
    return np.dtype(np.uint16 if max_label <= _UINT16_MAX else np.uint32)


def to_label_dtype(labels: Any) -> np.ndarray:
    """Return ``labels`` as uint16, or uint32 above 65535, checking it is a label image.

    The reader's check: floats are accepted when every value is a whole number
    (some tools save labels as float32), a boolean mask becomes object 1.

    Parameters
    ----------
    labels : array_like
        Label image of any shape.

    Returns
    -------
    ndarray of uint16 or uint32
        ``labels`` itself when it already has that dtype, else a converted copy.

    Raises
    ------
    InputError
        For a dtype that is not integer, float or boolean, an empty image, NaN
        or fractional values, negative labels, or labels beyond uint32.

    Examples
    --------
    >>> to_label_dtype(np.array([[0, 70000]])).dtype
    dtype('uint32')
    >>> to_label_dtype(np.array([[0.0, 2.0]])).dtype
    dtype('uint16')
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.astype(np.uint16)
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all():
            raise InputError("label image contains NaN or infinite values")
        if not np.array_equal(labels, np.round(labels)):
            raise InputError("label image has fractional values; expected integer object labels (is this an intensity image?)")
    else:
        check_labels(labels, allow_float=True, check_values=False)
    if labels.size == 0:
        raise InputError("label image is empty")
    low, high = labels.min(), labels.max()
    if low < 0:
        raise InputError(f"label image has negative values (min {low}); labels must be 0 (background) or positive")
    dtype = label_dtype(high)
    return labels.astype(dtype, copy=labels.dtype != dtype)
