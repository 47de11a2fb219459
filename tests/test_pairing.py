"""Tests for pairing image files with mask files by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from segtool.errors import InputError
from segtool.pairing import MASK_SUFFIXES, pair_by_stem


def names(pairs):
    return [(p.image.name, p.mask.name, p.stem) for p in pairs]


def test_same_names_in_two_folders():
    pairs = pair_by_stem(["img/b.tif", "img/a.tif"], ["gt/a.tif", "gt/b.tif"])
    assert names(pairs) == [("a.tif", "a.tif", "a"), ("b.tif", "b.tif", "b")]
    assert pairs[0].image == Path("img/a.tif") and pairs[0].mask == Path("gt/a.tif")


@pytest.mark.parametrize("suffix", ["_mask", "_masks", "_labels", "_cp_masks", "_MASK"])
def test_common_mask_suffixes_and_extensions(suffix):
    pairs = pair_by_stem(["x/cell_01.tif"], [f"y/cell_01{suffix}.png"])
    assert names(pairs) == [("cell_01.tif", f"cell_01{suffix}.png", "cell_01")]


def test_default_suffixes_include_the_common_ones():
    for suffix in ("_mask", "_masks", "_labels", "_cp_masks"):
        assert suffix in MASK_SUFFIXES


def test_ome_tiff_and_dotted_names():
    pairs = pair_by_stem(["a.b.ome.tif", "c.tiff"], ["a.b_mask.tif", "c_labels.tif"])
    assert [p.stem for p in pairs] == ["a.b", "c"]


def test_exact_name_wins_over_stripped_suffix():
    # an image literally called "x_mask" pairs with the mask "x_mask.tif", not with image "x"
    pairs = pair_by_stem(["i/x.tif", "i/x_mask.tif"], ["m/x.tif", "m/x_mask.tif"])
    assert names(pairs) == [("x.tif", "x.tif", "x"), ("x_mask.tif", "x_mask.tif", "x_mask")]


def test_unmatched_files_are_listed():
    with pytest.raises(InputError) as info:
        pair_by_stem(["i/a.tif", "i/b.tif", "i/c.tif"], ["m/a.tif", "m/zz.tif"])
    message = str(info.value)
    assert "2 image(s) without a mask: i/b.tif, i/c.tif" in message
    assert "1 mask(s) without an image: m/zz.tif" in message
    assert "\n" not in message


def test_long_lists_are_shortened():
    images = [f"i/{k:02d}.tif" for k in range(12)]
    with pytest.raises(InputError, match="12 image\\(s\\) without a mask: .* and 7 more"):
        pair_by_stem(images, ["m/nothing.tif"])


def test_allow_unmatched_returns_the_matches():
    pairs = pair_by_stem(["a.tif", "b.tif"], ["m/a.tif", "m/c.tif"], allow_unmatched=True)
    assert names(pairs) == [("a.tif", "a.tif", "a")]


def test_two_masks_for_one_image():
    with pytest.raises(InputError, match="two masks match image a.tif"):
        pair_by_stem(["a.tif"], ["m/a_mask.tif", "m/a_labels.tif"])


def test_two_images_with_one_stem():
    with pytest.raises(InputError, match="same name stem 'a'"):
        pair_by_stem(["a.tif", "a.png"], ["m/a.tif"])


def test_no_images():
    with pytest.raises(InputError, match="no image files"):
        pair_by_stem([], ["m/a.tif"])


def test_custom_suffixes():
    pairs = pair_by_stem(["a.tif"], ["a-gt.tif"], mask_suffixes=("-gt",))
    assert names(pairs) == [("a.tif", "a-gt.tif", "a")]
    with pytest.raises(InputError):
        pair_by_stem(["a.tif"], ["a_mask.tif"], mask_suffixes=("-gt",))
