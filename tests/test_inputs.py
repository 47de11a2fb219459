"""Input expansion (files, folders, globs, stdin) and output naming."""

from __future__ import annotations

import pytest

from pathlib import Path

import numpy as np
import tifffile

from segtool.inputs import base_stem, expand_inputs, output_path


def _touch_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        tifffile.imwrite(folder / name, np.zeros((2, 2), np.uint8))


def test_folder_expansion_skips_outputs_hidden_and_non_images(tmp_path):
    _touch_images(tmp_path, ["b.tif", "a.tif", "a_labels.tif", "a_background.tif", ".a.tif.1234.part", "c.TIFF"])
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "a_overlay.png").write_bytes(b"")
    found = expand_inputs([str(tmp_path)])
    assert [p.name for p in found.files] == ["a.tif", "b.tif", "c.TIFF"]
    assert found.problems == []


def test_labels_kind_keeps_label_outputs(tmp_path):
    _touch_images(tmp_path, ["a_labels.tif", "a_background.tif", "b.tif"])
    names = [p.name for p in expand_inputs([str(tmp_path)], kind="labels").files]
    assert names == ["a_labels.tif", "b.tif"]


def test_recursive(tmp_path):
    _touch_images(tmp_path / "sub", ["deep.tif"])
    _touch_images(tmp_path, ["top.tif"])
    assert [p.name for p in expand_inputs([str(tmp_path)]).files] == ["top.tif"]
    assert [p.name for p in expand_inputs([str(tmp_path)], recursive=True).files] == ["deep.tif", "top.tif"]


def test_glob_and_no_match(tmp_path):
    _touch_images(tmp_path, ["x1.tif", "x2.tif", "y.tif"])
    found = expand_inputs([str(tmp_path / "x*.tif"), str(tmp_path / "z*.tif")])
    assert [p.name for p in found.files] == ["x1.tif", "x2.tif"]
    assert len(found.problems) == 1 and "matches" in found.problems[0][1]


def test_stdin_list_and_dedup(tmp_path):
    _touch_images(tmp_path, ["a.tif", "b.tif"])
    lines = [str(tmp_path / "a.tif"), "", "# comment", str(tmp_path / "b.tif"), str(tmp_path / "a.tif")]
    found = expand_inputs(["-", str(tmp_path / "b.tif")], stdin_lines=lines)
    assert [p.name for p in found.files] == ["a.tif", "b.tif"]


def test_missing_file_is_kept_for_a_per_file_error(tmp_path):
    found = expand_inputs([str(tmp_path / "gone.tif")])
    assert found.files == [tmp_path / "gone.tif"]


def test_empty_folder_is_a_problem(tmp_path):
    found = expand_inputs([str(tmp_path)])
    assert found.files == [] and "no image files" in found.problems[0][1]


def test_output_naming():
    assert base_stem(Path("x/img.ome.tif")) == "img"
    assert output_path(Path("x/img.tif"), "_labels.tif") == Path("x/img_labels.tif")
    assert output_path(Path("x/img.png"), "_labels.tif", output_dir=Path("o")) == Path("o/img_labels.tif")


def test_zarr_stores_are_images_not_folders(tmp_path):
    from segtool.inputs import base_stem, expand_inputs

    (tmp_path / "a.zarr").mkdir()
    (tmp_path / "a.zarr" / "zarr.json").write_text("{}")
    (tmp_path / "plate").mkdir()  # a store without the .zarr name, known by its metadata
    (tmp_path / "plate" / ".zattrs").write_text("{}")
    (tmp_path / "b.tif").write_bytes(b"x")
    (tmp_path / "b_labels.ome.zarr").mkdir()  # segtool's own big-image output: never an input
    (tmp_path / "b_labels.ome.zarr" / ".zgroup").write_text("{}")
    found = expand_inputs([str(tmp_path)])
    assert [p.name for p in found.files] == ["a.zarr", "b.tif"]  # "plate" has no image name ending
    assert expand_inputs([str(tmp_path / "plate")]).files == [tmp_path / "plate"]  # named: taken as given
    # Label-reading commands (export, evaluate) read TIFF/PNG: stores are not picked up from folders.
    assert [p.name for p in expand_inputs([str(tmp_path)], kind="labels").files] == ["b.tif"]
    assert base_stem(tmp_path / "img.ome.zarr") == "img" and base_stem(tmp_path / "img.zarr") == "img"


def test_reading_a_zarr_store_in_memory_points_to_block_mode(tmp_path):
    from segtool.errors import InputError
    from segtool.io import read_image

    (tmp_path / "a.zarr").mkdir()
    with pytest.raises(InputError, match="add --block-size"):
        read_image(tmp_path / "a.zarr")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        read_image(tmp_path / "folder")
