"""Measurement helpers shared by 2-D and 3-D tables (segtool.measure)."""

from __future__ import annotations

import numpy as np
import pytest

from segtool.errors import InputError
from segtool.measure import check_intensity, summary_row, unit_tag


def test_unit_tags():
    assert unit_tag("micron") == "um"
    assert unit_tag(" Micrometre ") == "um"
    assert unit_tag("nm") == "nm"
    assert unit_tag("µ") == "cal"  # nothing ASCII left
    assert unit_tag("", default="px") == "px"


def test_intensity_must_match_the_labels():
    image = np.ones((2, 3), np.uint8)
    assert check_intensity(image, (2, 3)) is image
    with pytest.raises(InputError, match=r"^image shape \(2, 3\) differs from labels shape \(3, 2\)$"):
        check_intensity(image, (3, 2))
    with pytest.raises(InputError, match=r"^image has unsupported dtype <U1$"):
        check_intensity(np.array([["a"]]), (1, 1))


def test_a_volume_summary_reads_the_volume_columns():
    labels = np.zeros((2, 2, 5), np.uint8)
    labels[0, 0, :3] = 1
    labels[1, :, :] = 2
    table = {
        "label": np.array([1, 2]),
        "volume": np.array([3.0, 10.0]),
        "volume_um3": np.array([6.0, 20.0]),
        "volume_um2": np.array([9.0, 9.0]),  # not a volume column: ignored
        "area": np.array([99.0, 99.0]),
    }
    row = summary_row(labels, table, dims=3)
    assert row == {"objects": 2, "mean_volume": 6.5, "median_volume": 6.5, "coverage": 13 / 20, "mean_volume_um3": 13.0}


def test_an_empty_table_summarises_to_zeros():
    table = {"label": np.zeros(0), "area": np.zeros(0), "mean_intensity": np.zeros(0)}
    row = summary_row(np.zeros((3, 3), np.uint8), table)
    assert row == {"objects": 0, "mean_area": 0.0, "median_area": 0.0, "coverage": 0.0, "mean_intensity": 0.0}
