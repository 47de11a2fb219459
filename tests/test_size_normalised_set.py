"""bench/size_normalised_set.py: a training set resized per image as ``predict --diameter auto`` resizes it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import size_normalised_set  # noqa: E402
from segtool.infer.sizing import median_diameter  # noqa: E402


def discs(radius: int, shape=(256, 256), step=None) -> tuple[np.ndarray, np.ndarray]:
    """A grid of bright discs of ``radius`` on a dark field, and their labels."""
    step = step or 3 * radius
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    n = 0
    for cy in range(radius + 2, shape[0] - radius - 2, step):
        for cx in range(radius + 2, shape[1] - radius - 2, step):
            n += 1
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = n
    image = np.where(labels > 0, 200, 20).astype(np.uint8)
    return image, labels


def write_set(folder: Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    for name, (image, labels) in pairs.items():
        tifffile.imwrite(folder / "images" / name, image)
        tifffile.imwrite(folder / "masks" / name, labels)
    return folder


def run(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["size_normalised_set.py", *args])
    size_normalised_set.main()


def test_large_objects_are_shrunk_to_the_training_diameter_and_small_ones_to_the_band_edge(tmp_path, monkeypatch):
    source = write_set(tmp_path / "src", {"big.tif": discs(21), "small.tif": discs(5, step=14)})
    run(monkeypatch, str(source), str(tmp_path / "out"), "--diameter", "21")
    big_labels = tifffile.imread(tmp_path / "out" / "masks" / "big.tif")
    small_labels = tifffile.imread(tmp_path / "out" / "masks" / "small.tif")
    # discs 42 px across become about 21 (the training diameter); 10-11 px ones about 21 / 1.3 = 16.2
    assert abs(median_diameter(big_labels)[0] - 21.0) < 2.0
    assert abs(median_diameter(small_labels)[0] - 16.2) < 1.5
    assert big_labels.shape[0] < 140 and small_labels.shape[0] > 330
    # every object survives the resize, with its own id
    assert set(np.unique(big_labels)) == set(np.unique(discs(21)[1]))
    assert tifffile.imread(tmp_path / "out" / "images" / "big.tif").shape == big_labels.shape


def test_objects_within_the_kept_band_are_written_unchanged(tmp_path, monkeypatch):
    image, labels = discs(11)
    source = write_set(tmp_path / "src", {"kept.tif": (image, labels)})
    run(monkeypatch, str(source), str(tmp_path / "out"), "--diameter", "21")
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "images" / "kept.tif"), image)
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "masks" / "kept.tif"), labels)


def test_integers_keeps_the_image_type_and_default_writes_float(tmp_path):
    image, labels = discs(21)
    rgb = np.stack([image, image // 2, image // 3], axis=-1)
    as_int, _ = size_normalised_set.resize_pair(rgb, labels, 0.5, integers=True)
    as_float, new_labels = size_normalised_set.resize_pair(rgb, labels, 0.5)
    assert as_int.dtype == np.uint8 and as_int.shape == (128, 128, 3)
    assert as_float.dtype == np.float32 and new_labels.dtype == labels.dtype
    assert np.abs(as_float - as_int).max() <= 0.5 + 1e-4


def test_a_source_without_masks_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    (tmp_path / "src" / "images").mkdir(parents=True)
    with pytest.raises(SystemExit, match="needs images/ and masks/"):
        run(monkeypatch, str(tmp_path / "src"), str(tmp_path / "out"), "--diameter", "21")
    assert not (tmp_path / "out").exists()
