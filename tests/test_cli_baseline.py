"""`segtool baseline` through the CLI: outputs, JSON, errors, exit codes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile

from segtool import __version__
from segtool.io import read_labels

from helpers import invoke


def test_version_and_help_list_commands():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"segtool {__version__}"
    result = invoke("--help")
    assert result.exit_code == 0
    assert "baseline" in result.stdout


def test_baseline_on_sample_data_json(tmp_path, sample_images, sample_masks):
    result = invoke("baseline", sample_images[0].parent, "-o", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["input"] for r in records] == [str(p) for p in sample_images]
    for record, mask_path in zip(records, sample_masks):
        assert record["status"] == "done"
        labels = read_labels(record["outputs"]["labels"]).data
        true_count = int(read_labels(mask_path).data.max())
        assert labels.max() == record["objects"]
        # The classical method finds roughly the right number of nuclei on these clean images.
        assert 0.5 * true_count <= record["objects"] <= 1.5 * true_count
        assert {"threshold", "polarity", "background", "seconds"} <= set(record)


def test_baseline_extra_outputs_and_calibration(tmp_path):
    yy, xx = np.mgrid[:64, :80]
    image = (100 + 0.5 * xx + 0.2 * yy).astype(np.float32)
    image[20:30, 20:30] += 300
    image[40:50, 50:60] += 300
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, image, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "micron"})
    out = tmp_path / "out"
    result = invoke("baseline", src, "-o", out, "--save-background", "--save-corrected", "--save-overlay")
    assert result.exit_code == 0, result.stderr
    labels = read_labels(out / "img_labels.tif")
    assert labels.data.max() == 2
    assert labels.pixel_size == pytest.approx((0.5, 0.5)) and labels.unit == "micron"
    background = tifffile.imread(out / "img_background.tif")
    assert background.dtype == np.float32
    assert np.abs(background - (100 + 0.5 * xx + 0.2 * yy))[:15].max() < 5
    assert (out / "img_corrected.tif").exists() and (out / "img_overlay.png").exists()


def test_bad_file_reported_in_one_line_and_others_done(tmp_path, sample_images):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sample_images[0], folder / "good.tif")
    (folder / "broken.tif").write_bytes(b"this is not a tiff")
    result = invoke("baseline", folder, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["status"] for r in records} == {"done", "failed"}
    errors = [line for line in result.stderr.splitlines() if line.startswith("segtool: error:")]
    assert len(errors) == 1 and "broken.tif" in errors[0]
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out" / "good_labels.tif").exists()
    assert not (tmp_path / "out" / "broken_labels.tif").exists()


@pytest.mark.parametrize(
    "image",
    [
        np.full((32, 32), 7, np.uint16),
        np.zeros((32, 32), np.uint8),
        (1000 + np.add.outer(np.arange(32.0) ** 2, 0.5 * np.arange(40.0) ** 2) / 10).astype(np.float32),
    ],
    ids=["constant", "all-zero", "smooth-background"],
)
def test_empty_well_is_done_with_zero_objects(tmp_path, image):
    tifffile.imwrite(tmp_path / "well.tif", image)
    result = invoke("baseline", tmp_path / "well.tif", "-o", tmp_path / "out", "--json", "--save-background")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "done" and record["objects"] == 0 and record["empty_reason"]
    labels = tifffile.imread(tmp_path / "out" / "well_labels.tif")
    assert labels.shape == image.shape and not labels.any()
    background = tifffile.imread(tmp_path / "out" / "well_background.tif")
    assert np.allclose(background, image, rtol=1e-4, atol=1e-3)
    assert "error" not in result.stderr and "Traceback" not in result.stderr


def test_no_overwrite_without_flag(tmp_path, sample_images):
    args = ("baseline", sample_images[0], "-o", tmp_path)
    assert invoke(*args).exit_code == 0
    before = (tmp_path / (sample_images[0].stem + "_labels.tif")).stat().st_mtime_ns
    again = invoke(*args)
    assert again.exit_code == 1 and "--overwrite" in again.stderr
    assert (tmp_path / (sample_images[0].stem + "_labels.tif")).stat().st_mtime_ns == before
    assert invoke(*args, "--skip-existing").exit_code == 0
    assert invoke(*args, "--overwrite").exit_code == 0


def test_stdin_list(tmp_path, sample_images):
    listing = "\n".join(str(p) for p in sample_images[:2]) + "\n"
    result = invoke("baseline", "-", "-o", tmp_path, input=listing)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(tmp_path / (p.stem + "_labels.tif")) for p in sample_images[:2]]


@pytest.mark.parametrize(
    "args, message",
    [
        (("--threshold", "median"), "--threshold"),
        (("--polarity", "sideways"), "--polarity"),
        (("--degree", "-1"), "degree"),
    ],
)
def test_bad_option_values_are_usage_errors(tmp_path, sample_images, args, message):
    result = invoke("baseline", sample_images[0], "-o", tmp_path, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert not list(tmp_path.iterdir())


def test_missing_input_and_empty_glob(tmp_path):
    result = invoke("baseline", tmp_path / "nope.tif", str(tmp_path / "*.tif"), "-o", tmp_path)
    assert result.exit_code == 1
    assert "nope.tif: no such file" in result.stderr
    assert "no image file matches" in result.stderr
