"""Checks of scalar options (counts, sizes) shared by the library modules.

Each returns the value in its plain Python type or raises
:class:`~segtool.errors.InputError` naming the option, so every module words
a bad count or size the same way. ``bool`` is refused where a number is
meant, although Python counts it as an integer.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from segtool.errors import InputError
from segtool.thresholds import THRESHOLD_METHODS

__all__ = ["is_finite_number", "check_count", "check_nonnegative", "check_positive", "check_choice", "check_shape",
           "check_sigma", "check_threshold"]


def is_finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite real number (not ``bool``).

    Examples
    --------
    >>> is_finite_number(2.5), is_finite_number(True), is_finite_number(float("nan"))
    (True, False, False)
    """
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def check_count(value: Any, name: str) -> int:
    """Validate an integer >= 0.

    Parameters
    ----------
    value : int
        The given value.
    name : str
        Option name for the error message.

    Returns
    -------
    count : int

    Raises
    ------
    InputError
        If ``value`` is not an integer >= 0.

    Examples
    --------
    >>> check_count(3, "min_size")
    3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InputError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def check_nonnegative(value: Any, name: str, *, meaning: str | None = None) -> float:
    """Validate a finite number >= 0.

    Parameters
    ----------
    value : float
        The given value.
    name : str
        Option name for the error message.
    meaning : str, optional
        What the number is, added in brackets after ``>= 0`` in the message
        (``"Gaussian sigma in pixels"``).

    Returns
    -------
    value : float

    Raises
    ------
    InputError
        If ``value`` is not a finite number >= 0.
    """
    if not is_finite_number(value) or value < 0:
        said = f" ({meaning})" if meaning else ""
        raise InputError(f"{name} must be a number >= 0{said}, got {value!r}")
    return float(value)


def check_positive(value: Any, name: str) -> float:
    """Validate a finite number > 0: :func:`check_nonnegative` without zero.

    Raises
    ------
    InputError
        If ``value`` is not a finite number > 0; the message names ``name``.
    """
    if not is_finite_number(value) or value <= 0:
        raise InputError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def check_choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    """Validate a case-insensitive choice and return it lower-cased.

    Parameters
    ----------
    value : str
        The given value.
    choices : tuple of str
        Accepted lower-case values.
    name : str
        Option name for the error message.

    Returns
    -------
    choice : str

    Raises
    ------
    InputError
        If ``value`` is not one of ``choices``.
    """
    if not isinstance(value, str) or value.lower() not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value.lower()


_COUNT_WORDS = {2: "two", 3: "three"}


def check_shape(shape: Any, ndim: int, *, axes: str = "") -> tuple[int, ...]:
    """Validate an image shape: ``ndim`` integers >= 1.

    Parameters
    ----------
    shape : sequence of int
        The given shape.
    ndim : int
        Number of axes required (2 or 3).
    axes : str, optional
        Axis names for the message, such as ``"(H, W)"``.

    Returns
    -------
    shape : tuple of int

    Raises
    ------
    InputError
        If ``shape`` is not ``ndim`` positive integers.

    Examples
    --------
    >>> check_shape([4, 5.0], 2)
    (4, 5)
    """
    said = f" {axes}" if axes else ""
    message = f"shape must be {_COUNT_WORDS[ndim]} positive integers{said}, got {shape!r}"
    try:
        sizes = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise InputError(message) from None
    if len(sizes) != ndim or min(sizes) < 1:
        raise InputError(message)
    return sizes


def check_sigma(value: Any) -> float:
    """Validate a Gaussian sigma (a finite number >= 0).

    Parameters
    ----------
    value : float
        Sigma in pixels.

    Returns
    -------
    sigma : float

    Raises
    ------
    InputError
        As :func:`segtool.checks.check_nonnegative`, naming ``smooth``.
    """
    return check_nonnegative(value, "smooth", meaning="Gaussian sigma in pixels")


def check_threshold(threshold: Any) -> str | float:
    """Validate a threshold: a method name (lower-cased) or a finite number.

    Parameters
    ----------
    threshold : str or float
        One of ``THRESHOLD_METHODS`` or a fixed level.

    Returns
    -------
    threshold : str or float

    Raises
    ------
    InputError
        If ``threshold`` is neither.
    """
    if isinstance(threshold, str):
        if threshold.lower() in THRESHOLD_METHODS:
            return threshold.lower()
    elif is_finite_number(threshold):
        return float(threshold)
    raise InputError(f"threshold must be one of {', '.join(THRESHOLD_METHODS)} or a finite number, got {threshold!r}")
