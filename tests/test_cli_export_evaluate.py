"""`segtool export`, `segtool measure` and `segtool evaluate` through the CLI."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
import roifile
import tifffile
from PIL import Image as PILImage

from segtool.io import read_labels

from helpers import invoke


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("segtool: error:")]


def two_squares(shape=(40, 50), shift=0, dtype=np.uint16) -> np.ndarray:
    labels = np.zeros(shape, dtype)
    labels[5:15, 5 + shift : 15 + shift] = 1
    labels[20:30, 25:35] = 2
    return labels


# --------------------------------------------------------------------------- export


def test_export_every_format_with_image_folder(tmp_path, sample_images, sample_masks):
    out = tmp_path / "out"
    result = invoke(
        "export", sample_masks[0].parent, "-f", "labels,binary,png", "-f", "imagej-roi", "-f", "geojson,csv",
        "--image", sample_images[0].parent, "-o", out, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["status"] for r in records] == ["done"] * len(sample_masks)
    for record, mask_path in zip(records, sample_masks):
        stem = mask_path.stem
        truth = read_labels(mask_path).data
        n_objects = len(np.unique(truth)) - 1
        assert record["objects"] == n_objects
        assert set(record["outputs"]) == {"labels", "binary", "png", "imagej-roi", "geojson", "csv"}
        assert record["outputs"]["png"].endswith(f"{stem}_overlay.png")  # outlines on the image
        np.testing.assert_array_equal(read_labels(out / f"{stem}_labels.tif").data, truth)
        assert set(np.unique(tifffile.imread(out / f"{stem}_binary.tif")).tolist()) == {0, 255}
        assert len(roifile.roiread(out / f"{stem}_rois.zip")) == n_objects
        document = json.loads((out / f"{stem}.geojson").read_text())
        assert len(document["features"]) == n_objects
        assert "mean_intensity" in document["features"][0]["properties"]["measurements"]
        with open(out / f"{stem}_objects.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == n_objects and {"label", "area", "mean_intensity", "integrated_intensity"} <= set(rows[0])


def test_export_converts_png_and_int64_labels_and_strips_mask_endings(tmp_path):
    labels = two_squares()
    labels[labels == 2] = 300  # beyond uint8
    PILImage.fromarray(labels.astype(np.uint16)).save(tmp_path / "cells_cp_masks.png")
    tifffile.imwrite(tmp_path / "big_masks.tif", (labels.astype(np.int64) * 1000))  # int64, labels up to 300,000
    out = tmp_path / "out"
    result = invoke("export", tmp_path / "cells_cp_masks.png", tmp_path / "big_masks.tif", "-f", "labels,png", "-o", out)
    assert result.exit_code == 0, result.stderr
    converted = read_labels(out / "cells_labels.tif").data
    assert converted.dtype == np.uint16
    np.testing.assert_array_equal(converted, labels)
    big = tifffile.imread(out / "big_labels.tif")
    assert big.dtype == np.uint32 and big.max() == 300_000
    picture = np.asarray(PILImage.open(out / "cells_labels.png"))
    assert picture.dtype == np.uint8 and picture.shape == labels.shape + (3,)
    assert (picture[labels == 1] != 0).any() and not picture[labels == 0].any()  # visible colours, black background
    # Piped stdout: every file written, one per line, input by input.
    assert result.stdout.split() == [str(out / f"{stem}_labels.{ext}") for stem in ("cells", "big") for ext in ("tif", "png")]


def test_export_refuses_to_replace_its_input(tmp_path):
    source = tmp_path / "img_labels.tif"
    tifffile.imwrite(source, two_squares())
    before = source.read_bytes()
    result = invoke("export", source, "-f", "labels")
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1 and "replace the input" in result.stderr
    assert source.read_bytes() == before


def test_export_format_errors_are_usage_errors(tmp_path):
    source = tmp_path / "a.tif"
    tifffile.imwrite(source, two_squares())
    result = invoke("export", source, "-f", "shapefile")
    assert result.exit_code == 2 and "unknown --format 'shapefile'" in result.stderr and result.stdout == ""
    result = invoke("export", source)
    assert result.exit_code == 2 and "--format" in result.stderr
    result = invoke("export", source, "-f", "csv", "--image", tmp_path / "nope")
    assert result.exit_code == 2 and "--image" in result.stderr


def test_export_overwrite_and_bad_files(tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    tifffile.imwrite(folder / "good.tif", two_squares())
    (folder / "broken.tif").write_bytes(b"not a tiff")
    tifffile.imwrite(folder / "float.tif", np.random.default_rng(0).random((10, 10)).astype(np.float32))
    out = tmp_path / "out"
    result = invoke("export", folder, "-f", "geojson", "-o", out)
    assert result.exit_code == 1
    errors = error_lines(result)
    assert len(errors) == 2 and any("broken.tif" in e for e in errors) and any("float.tif" in e for e in errors)
    assert "Traceback" not in result.stderr
    assert (out / "good.geojson").exists() and not (out / "broken.geojson").exists()
    again = invoke("export", folder / "good.tif", "-f", "geojson", "-o", out)
    assert again.exit_code == 1 and "exists" in again.stderr
    forced = invoke("export", folder / "good.tif", "-f", "geojson", "-o", out, "--overwrite")
    assert forced.exit_code == 0, forced.stderr


def test_export_image_folder_without_matching_image(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", np.ones((40, 50), np.uint8))
    tifffile.imwrite(tmp_path / "a_labels.tif", two_squares())
    tifffile.imwrite(tmp_path / "b_labels.tif", two_squares())
    result = invoke("export", tmp_path / "a_labels.tif", tmp_path / "b_labels.tif", "-f", "csv", "--image", images, "--json")
    assert result.exit_code == 1
    records = {json.loads(line)["input"]: json.loads(line) for line in result.stdout.splitlines()}
    assert records[str(tmp_path / "a_labels.tif")]["status"] == "done"
    assert records[str(tmp_path / "b_labels.tif")]["status"] == "failed"
    assert "no image named b" in error_lines(result)[0]


# --------------------------------------------------------------------------- measure


def test_measure_writes_object_tables_with_calibration(tmp_path):
    source = tmp_path / "cells_labels.tif"
    tifffile.imwrite(source, two_squares(), imagej=True, resolution=(2.0, 2.0), metadata={"unit": "micron"})
    result = invoke("measure", source, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    with open(tmp_path / "out" / "cells_objects.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["area"]) for r in rows] == [100.0, 100.0]
    assert [float(r["area_um2"]) for r in rows] == [25.0, 25.0]


def test_measure_summary_rows_on_stdout(tmp_path, sample_masks, sample_images):
    result = invoke("measure", sample_masks[0].parent, "--summary", "--image", sample_images[0].parent)
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == len(sample_masks)
    for row, mask_path in zip(rows, sample_masks):
        truth = read_labels(mask_path).data
        assert row["labels"] == str(mask_path)
        assert int(row["objects"]) == len(np.unique(truth)) - 1
        assert float(row["coverage"]) == pytest.approx(np.mean(truth > 0), rel=1e-4)
        assert float(row["mean_intensity"]) > 0
    assert not list(tmp_path.iterdir())  # nothing written
    as_json = invoke("measure", sample_masks[0], "--summary", "--json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["objects"] == len(np.unique(read_labels(sample_masks[0]).data)) - 1


# --------------------------------------------------------------------------- evaluate


def test_evaluate_perfect_folder_json(tmp_path, sample_masks):
    pred = tmp_path / "pred"
    pred.mkdir()
    for path in sample_masks:
        shutil.copy(path, pred / f"{path.stem}_labels.tif")
    result = invoke("evaluate", pred, sample_masks[0].parent, "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["thresholds"] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    assert len(document["images"]) == len(sample_masks) and document["total"]["n_images"] == len(sample_masks)
    assert all(row["ap"] == 1.0 and row["fp"] == 0 for row in document["total"]["per_threshold"])
    assert document["total"]["pixel_dice"] == 1.0


def test_evaluate_known_answer_table_csv_and_plot(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    tifffile.imwrite(gt_dir / "a_masks.tif", two_squares())
    PILImage.fromarray(two_squares(shift=2)).save(pred_dir / "a_cp_masks.png")  # one square shifted: IoU 2/3
    empty = np.zeros((40, 50), np.uint16)
    tifffile.imwrite(gt_dir / "b.tif", empty)
    tifffile.imwrite(pred_dir / "b_labels.tif", two_squares())  # two false positives
    csv_path, plot = tmp_path / "scores.csv", tmp_path / "curve.png"
    result = invoke("evaluate", pred_dir, gt_dir, "-t", "0.5,0.7", "--csv", csv_path, "--plot", plot)
    assert result.exit_code == 0, result.stderr
    assert "AP" in result.stdout and "0.70" in result.stdout  # the table goes to stdout
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == (2 + 1) * 2
    by_key = {(r["scope"], r["name"], r["threshold"]): r for r in rows}
    a50, a70 = by_key[("image", "a", "0.5")], by_key[("image", "a", "0.7")]
    assert (a50["tp"], a50["fp"], a50["fn"]) == ("2", "0", "0")
    assert (a70["tp"], a70["fp"], a70["fn"]) == ("1", "1", "1")
    b50 = by_key[("image", "b", "0.5")]
    assert (b50["tp"], b50["fp"], b50["fn"], b50["ap"]) == ("0", "2", "0", "0")
    total50 = by_key[("dataset", "", "0.5")]
    assert (total50["tp"], total50["fp"], total50["fn"]) == ("2", "2", "0")
    assert float(total50["ap"]) == pytest.approx(0.5)  # from summed counts, not the mean of 1.0 and 0.0
    assert plot.read_bytes()[:4] == b"\x89PNG"
    again = invoke("evaluate", pred_dir, gt_dir, "--csv", csv_path)
    assert again.exit_code == 1 and "exists" in again.stderr
    assert invoke("evaluate", pred_dir, gt_dir, "--csv", csv_path, "--overwrite", "-q").exit_code == 0


def test_evaluate_missing_pairs_and_shape_mismatch_are_listed(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    for name in ("a", "b", "c"):
        tifffile.imwrite(gt_dir / f"{name}.tif", two_squares())
    tifffile.imwrite(pred_dir / "a_labels.tif", two_squares())
    tifffile.imwrite(pred_dir / "b_labels.tif", two_squares(shape=(40, 60)))
    tifffile.imwrite(pred_dir / "z_labels.tif", two_squares())
    result = invoke("evaluate", pred_dir, gt_dir, "--json")
    assert result.exit_code == 1
    errors = error_lines(result)
    assert len(errors) == 3
    assert any("z_labels.tif" in e and "no ground truth" in e for e in errors)
    assert any("c.tif" in e and "no prediction" in e for e in errors)
    assert any("b_labels.tif" in e and "b.tif" in e and "shape mismatch" in e and "(40, 60)" in e for e in errors)
    document = json.loads(result.stdout)  # the pair that could be scored is still reported
    assert [image["name"] for image in document["images"]] == ["a"] and document["failed"] == 3


def test_evaluate_single_files_with_any_names(tmp_path):
    tifffile.imwrite(tmp_path / "prediction.tif", two_squares(shift=1))
    tifffile.imwrite(tmp_path / "truth.tif", two_squares())
    result = invoke("evaluate", tmp_path / "prediction.tif", tmp_path / "truth.tif", "--json", "-t", "0.5:0.9:0.2")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["total"]["per_threshold"]
    assert [r["threshold"] for r in rows] == [0.5, 0.7, 0.9]
    assert [r["tp"] for r in rows] == [2, 2, 1]  # shift of 1 px: IoU 90/110 = 0.818


def test_evaluate_usage_and_missing_inputs(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", two_squares())
    bad = invoke("evaluate", tmp_path / "a.tif", tmp_path / "a.tif", "-t", "0,0.5")
    assert bad.exit_code == 2 and "--thresholds" in bad.stderr
    bad = invoke("evaluate", tmp_path / "a.tif", tmp_path / "a.tif", "-t", "half")
    assert bad.exit_code == 2
    missing = invoke("evaluate", tmp_path / "nope", tmp_path / "a.tif")
    assert missing.exit_code == 1 and "nope" in error_lines(missing)[0] and "Traceback" not in missing.stderr


def test_evaluate_prefers_label_files_saved_beside_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.full((40, 50), 7, np.uint8))  # the raw image
    tifffile.imwrite(folder / "a_labels.tif", two_squares())  # segtool's output beside it
    tifffile.imwrite(tmp_path / "a_masks.tif", two_squares())
    result = invoke("evaluate", folder, tmp_path / "a_masks.tif", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["images"][0]["pred"] == str(folder / "a_labels.tif")
    tifffile.imwrite(folder / "a_mask.tif", two_squares())  # now two label files claim "a"
    result = invoke("evaluate", folder, tmp_path / "a_masks.tif")
    assert result.exit_code == 1 and "several prediction files for 'a'" in result.stderr


def test_evaluate_plot_without_matplotlib_is_refused_before_any_work(tmp_path, monkeypatch):
    import segtool.plotting

    monkeypatch.setattr(segtool.plotting, "plotting_available", lambda: False)
    tifffile.imwrite(tmp_path / "a_labels.tif", two_squares())
    tifffile.imwrite(tmp_path / "a_masks.tif", two_squares())
    csv_path = tmp_path / "scores.csv"
    result = invoke("evaluate", tmp_path / "a_labels.tif", tmp_path / "a_masks.tif", "--csv", csv_path,
                    "--plot", tmp_path / "p.png")
    assert result.exit_code == 2
    assert result.stderr.strip() == "segtool: error: --plot needs matplotlib: pip install 'segtool[plot]' (matplotlib)"
    assert not csv_path.exists() and not (tmp_path / "p.png").exists()


def test_evaluate_errors_name_the_file_they_are_about(tmp_path, monkeypatch):
    """Unreadable predictions and ground truth each fail in one line naming that file; the rest is scored."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    for name in ("a", "b", "c"):
        tifffile.imwrite(gt_dir / f"{name}.tif", two_squares())
        tifffile.imwrite(pred_dir / f"{name}_labels.tif", two_squares())
    (pred_dir / "a_labels.tif").write_bytes(b"junk")
    (gt_dir / "b.tif").write_bytes(b"junk")
    result = invoke("evaluate", pred_dir, gt_dir, "--json")
    assert result.exit_code == 1
    errors = sorted(error_lines(result))
    assert len(errors) == 2
    assert errors[0].startswith(f"segtool: error: {gt_dir / 'b.tif'}: ") and str(pred_dir) not in errors[0]
    assert errors[1].startswith(f"segtool: error: {pred_dir / 'a_labels.tif'}: ") and str(gt_dir) not in errors[1]
    document = json.loads(result.stdout)
    assert [image["name"] for image in document["images"]] == ["c"] and document["failed"] == 2

    import segtool.tasks.evaluate as evaluate_task

    def broken(pair, thresholds, memory=None):
        raise RuntimeError("boom")

    monkeypatch.setattr(evaluate_task, "evaluate_pair", broken)
    bug = invoke("evaluate", pred_dir / "c_labels.tif", gt_dir / "c.tif")
    assert bug.exit_code == 1 and "Traceback" not in bug.stderr
    line = error_lines(bug)[0]
    assert line.startswith(f"segtool: error: {pred_dir / 'c_labels.tif'}: internal error (RuntimeError: boom)")
