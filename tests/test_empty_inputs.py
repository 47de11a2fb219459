"""Empty fields are results, not errors: predict on background, 0-object labels in evaluate/measure/export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile

from segtool.baseline import empty_image_reason

from helpers import invoke


def _no_nan(value) -> bool:
    """True when no float anywhere in a JSON document is NaN or infinite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_no_nan(v) for v in value.values())
    if isinstance(value, list):
        return all(_no_nan(v) for v in value)
    return True


def _empty_wells():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :128].astype(np.float64)
    bowl = 1000 + 0.05 * (yy - 48) ** 2 + 0.03 * (xx - 20) ** 2
    return {
        "zero": np.zeros((96, 128), np.uint16),
        "constant": np.full((96, 128), 700, np.uint16),
        "bowl": bowl.astype(np.float32),
        "bowl_noise": rng.normal(bowl, 8).astype(np.float32),
    }


def test_predict_on_empty_wells_gives_zero_objects(tmp_path):
    folder = tmp_path / "wells"
    folder.mkdir()
    for name, image in _empty_wells().items():
        tifffile.imwrite(folder / f"{name}.tif", image)
    # The shipped model; without the empty-image rule it finds blobs in the illuminated bowls.
    result = invoke("predict", folder, "-o", tmp_path / "out", "--json", "--threads", "1")
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["input"].rsplit("/", 1)[-1] for r in records) == ["bowl.tif", "bowl_noise.tif", "constant.tif", "zero.tif"]
    for record in records:
        assert record["status"] == "done" and record["objects"] == 0 and record["empty_reason"], record
        labels = tifffile.imread(record["outputs"]["labels"])
        assert labels.shape == (96, 128) and not labels.any()
    assert "error" not in result.stderr


def test_empty_rule_keeps_images_with_objects(sample_images):
    for path in sample_images:
        assert empty_image_reason(tifffile.imread(path)) is None


@pytest.fixture
def label_pairs(tmp_path):
    disk = np.zeros((40, 50), np.uint16)
    disk[5:15, 5:15] = 1
    empty = np.zeros((40, 50), np.uint16)
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    cases = {"both_empty": (empty, empty), "pred_empty": (empty, disk), "gt_empty": (disk, empty)}
    for name, (pred, gt) in cases.items():
        tifffile.imwrite(tmp_path / "pred" / f"{name}.tif", pred)
        tifffile.imwrite(tmp_path / "gt" / f"{name}.tif", gt)
    return tmp_path


def test_evaluate_handles_zero_object_images(label_pairs):
    result = invoke("evaluate", label_pairs / "pred", label_pairs / "gt", "--json", "--thresholds", "0.5")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert _no_nan(document)
    images = {r["name"]: r for r in document["images"]}
    both = images["both_empty"]["per_threshold"][0]
    # Nothing to find and nothing found: a perfect score (as pixel Dice of two empty masks).
    assert (both["tp"], both["fp"], both["fn"], both["f1"], both["ap"]) == (0, 0, 0, 1.0, 1.0)
    assert images["both_empty"]["pixel_dice"] == 1.0
    missed = images["pred_empty"]["per_threshold"][0]
    assert (missed["fn"], missed["precision"], missed["recall"], missed["f1"]) == (1, 0.0, 0.0, 0.0)
    extra = images["gt_empty"]["per_threshold"][0]
    assert (extra["fp"], extra["precision"], extra["recall"], extra["ap"]) == (1, 0.0, 0.0, 0.0)
    total = document["total"]["per_threshold"][0]
    assert (total["tp"], total["fp"], total["fn"], total["ap"]) == (0, 1, 1, 0.0)


def test_measure_and_export_handle_zero_object_labels(tmp_path):
    labels = tmp_path / "well_labels.tif"
    tifffile.imwrite(labels, np.zeros((30, 40), np.uint16))
    tifffile.imwrite(tmp_path / "well.tif", np.full((30, 40), 9, np.uint16))
    summary = invoke("measure", labels, "--summary", "--json", "--image", tmp_path)
    assert summary.exit_code == 0, summary.stderr
    row = json.loads(summary.stdout)
    assert _no_nan(row)
    assert row["objects"] == 0 and row["coverage"] == 0.0 and row["mean_area"] == 0.0 and row["mean_intensity"] == 0.0
    out = tmp_path / "out"
    result = invoke("export", labels, "-f", "labels,binary,png,imagej-roi,geojson,csv", "--image", tmp_path, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["objects"] == 0 and _no_nan(record)
    assert json.loads((out / "well.geojson").read_text())["features"] == []
    csv_lines = (out / "well_objects.csv").read_text().splitlines()
    assert len(csv_lines) == 1 and csv_lines[0].startswith("label,")
    assert not tifffile.imread(out / "well_labels.tif").any() and not tifffile.imread(out / "well_binary.tif").any()
