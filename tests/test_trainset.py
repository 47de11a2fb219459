"""Tests for segtool.train.trainset: pairing, reading under the memory guard, and the validation hold-out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from segtool.errors import InputError
from segtool.train.trainset import BadPairs, find_pairs, load_pairs, load_training_data


def write_set(root: Path, count: int, *, size: int = 24) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for index in range(count):
        labels = np.zeros((size, size), np.uint16)
        labels[4:10, 4 + index: 10 + index] = 1
        tifffile.imwrite(root / "images" / f"cell{index}.tif", (labels * 100 + 7).astype(np.uint8))
        tifffile.imwrite(root / "masks" / f"cell{index}_masks.tif", labels)
    return root


def test_one_folder_or_two_give_the_same_pairs(tmp_path):
    root = write_set(tmp_path / "d", 3)
    one = find_pairs([str(root)])
    two = find_pairs([str(root / "images"), str(root / "masks")])
    assert [(p.image.name, p.mask.name) for p in one] == [(p.image.name, p.mask.name) for p in two]
    assert [p.mask.name for p in one] == ["cell0_masks.tif", "cell1_masks.tif", "cell2_masks.tif"]


def test_find_pairs_refuses_what_cannot_be_paired(tmp_path):
    with pytest.raises(InputError, match="images/ and masks/"):
        find_pairs([str(tmp_path)])
    with pytest.raises(InputError, match="3 arguments"):
        find_pairs(["a", "b", "c"])
    with pytest.raises(InputError, match="no such file or folder"):
        find_pairs([str(tmp_path / "nope"), str(tmp_path)])


def test_every_bad_file_is_listed_once(tmp_path):
    root = write_set(tmp_path / "d", 3)
    tifffile.imwrite(root / "masks" / "cell1_masks.tif", np.zeros((5, 5), np.uint16))  # wrong shape
    tifffile.imwrite(root / "masks" / "cell2_masks.tif", np.full((24, 24), 0.5, np.float32))  # not labels
    with pytest.raises(BadPairs) as err:
        load_pairs(find_pairs([str(root)]), channel=None)
    problems = err.value.problems
    assert [Path(where).name for where, _ in problems] == ["cell1_masks.tif", "cell2_masks.tif"]
    assert "mask shape (5, 5) differs" in problems[0][1] and "not an integer label image" in problems[1][1]
    assert str(err.value) == "2 bad image/mask file(s)"


def test_memory_limit_refuses_before_reading_everything(tmp_path):
    root = write_set(tmp_path / "d", 2, size=64)
    with pytest.raises(BadPairs) as err:
        load_pairs(find_pairs([str(root)]), channel=None, memory_limit=64 * 64 + 100)
    assert err.value.problems and all("--max-memory" in message for _, message in err.value.problems)


def test_held_out_validation_images_are_disjoint_and_follow_the_seed(tmp_path):
    root = write_set(tmp_path / "d", 6)
    data = load_training_data([str(root)], None, fraction=0.34, split_seed=1)
    assert data.total == 6 and len(data.val) == len(data.val_names) == 2 and len(data.train) == 4
    assert not set(data.train_names) & set(data.val_names)
    assert load_training_data([str(root)], None, fraction=0.34, split_seed=1).val_names == data.val_names
    image, labels = data.train[0]
    assert image.shape == labels.shape == (24, 24) and labels.max() == 1


def test_separate_validation_folders_keep_every_training_image(tmp_path):
    root = write_set(tmp_path / "d", 3)
    val = write_set(tmp_path / "v", 2)
    data = load_training_data([str(root)], [str(val / "images"), str(val / "masks")], fraction=None, split_seed=0)
    assert len(data.train) == 3 and data.total == 3
    assert [Path(n).parent.parent.name for n in data.val_names] == ["v", "v"]
