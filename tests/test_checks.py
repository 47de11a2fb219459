"""Scalar option checks shared by the library (segtool.checks)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segtool.checks import check_count, check_nonnegative, check_positive, check_shape, is_finite_number
from segtool.errors import InputError


def test_counts_are_plain_ints():
    value = check_count(np.int64(7), "n")
    assert value == 7 and type(value) is int


@pytest.mark.parametrize("bad", [-1, 2.0, True, "3", None])
def test_a_bad_count_names_the_option(bad):
    with pytest.raises(InputError) as err:
        check_count(bad, "min_size")
    assert str(err.value) == f"min_size must be an integer >= 0, got {bad!r}"


def test_nonnegative_accepts_zero_and_refuses_the_rest():
    assert check_nonnegative(0, "noise") == 0.0
    assert type(check_nonnegative(np.float32(1.5), "noise")) is float
    for bad in (-0.1, math.inf, math.nan, False, "1"):
        with pytest.raises(InputError, match=r"^noise must be a number >= 0, got "):
            check_nonnegative(bad, "noise")


def test_nonnegative_says_what_the_number_means():
    with pytest.raises(InputError) as err:
        check_nonnegative(-1, "smooth", meaning="Gaussian sigma in pixels")
    assert str(err.value) == "smooth must be a number >= 0 (Gaussian sigma in pixels), got -1"


def test_shapes_are_tuples_of_positive_ints():
    assert check_shape((np.int64(3), 4.0), 2) == (3, 4)
    assert check_shape([2, 3, 4], 3, axes="(Z, Y, X)") == (2, 3, 4)


@pytest.mark.parametrize("bad", [(0, 4), (4,), (2, 3, 4, 5), "ab", None, (2, "x")])
def test_a_bad_shape_says_how_many_axes(bad):
    with pytest.raises(InputError) as err:
        check_shape(bad, 2, axes="(H, W)")
    assert str(err.value) == f"shape must be two positive integers (H, W), got {bad!r}"
    with pytest.raises(InputError) as err:
        check_shape(bad, 3)
    assert str(err.value) == f"shape must be three positive integers, got {bad!r}"


def test_positive_refuses_zero():
    assert check_positive(0.5, "z_spacing") == 0.5
    for bad in (0, -2, math.inf, True):
        with pytest.raises(InputError, match=r"^z_spacing must be a number > 0, got "):
            check_positive(bad, "z_spacing")


def test_finite_numbers():
    assert is_finite_number(3) and is_finite_number(np.float64(-1e300))
    assert not any(is_finite_number(v) for v in (True, math.nan, -math.inf, "1", None, 1j))


def test_choices_are_case_insensitive_and_named():
    from segtool.checks import check_choice

    assert check_choice("Bright", ("bright", "dark"), "polarity") == "bright"
    try:
        check_choice(3, ("bright", "dark"), "polarity")
    except InputError as err:
        assert str(err) == "polarity must be one of bright, dark, got 3"
    else:
        raise AssertionError("no error")
