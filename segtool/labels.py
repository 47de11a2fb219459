"""One check of label images, shared by metrics, export and the Dask writers.

A label image holds one non-negative integer per pixel: 0 for background,
``k`` for the pixels of object ``k``. :func:`check_labels` decides whether an
array is one, with the same words wherever a label image comes in, so
``evaluate``, ``export`` and the big-image writers reject the same input for
the same reason.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segtool.errors import InputError

__all__ = ["check_labels"]


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
