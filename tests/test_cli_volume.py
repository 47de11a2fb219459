"""Z stacks through the CLI: baseline in 3-D, --plane unchanged, evaluate by 3-D IoU, export/measure in 3-D."""

from __future__ import annotations

import csv
import io
import itertools
import json
import zipfile

import numpy as np
import pytest
import tifffile
from roifile import ImagejRoi

from segtool.io import read_labels
from segtool.volume.io import read_label_volume
from segtool.volume.writers import write_label_volume
from segtool.volume.synthetic import make_nuclei_stack

from helpers import invoke


@pytest.fixture
def stack_file(tmp_path):
    image, truth = make_nuclei_stack((20, 80, 80), z_spacing=2.0, n_nuclei=6, seed=11)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, image, imagej=True, resolution=(2.0, 2.0), metadata={"axes": "ZYX", "spacing": 1.0, "unit": "um"})
    return path, image, truth


def brute_force_matches(gt: np.ndarray, pred: np.ndarray, threshold: float) -> int:
    """Largest one-to-one matching at IoU > threshold, by trying every assignment (tiny inputs only)."""
    g_ids = [int(v) for v in np.unique(gt) if v]
    p_ids = [int(v) for v in np.unique(pred) if v]
    iou = np.zeros((len(g_ids), len(p_ids)))
    for i, g in enumerate(g_ids):
        for j, p in enumerate(p_ids):
            a, b = gt == g, pred == p
            iou[i, j] = (a & b).sum() / (a | b).sum()
    ok = iou > threshold
    best = 0
    for perm in itertools.permutations(range(len(p_ids)), min(len(g_ids), len(p_ids))):
        best = max(best, sum(ok[i, j] for i, j in enumerate(perm)))
    return best


def test_baseline_segments_a_z_stack_in_3d(tmp_path, stack_file):
    path, image, truth = stack_file
    result = invoke("baseline", path, "-o", tmp_path / "out", "--split", "--smooth", "1", "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["shape"] == [20, 80, 80]
    assert record["voxel_size"] == [1.0, 0.5, 0.5]
    assert record["z_spacing"] == 2.0  # 1 um planes, 0.5 um pixels
    labels = read_label_volume(record["outputs"]["labels"])
    assert labels.data.shape == image.shape and labels.voxel_size == (1.0, 0.5, 0.5) and labels.unit == "micron"
    # Objects are 3-D: each spans several planes under one label.
    assert record["objects"] == int(labels.data.max()) >= 4
    assert any(len(np.unique(np.nonzero(labels.data == k)[0])) > 3 for k in range(1, int(labels.data.max()) + 1))


def test_plane_still_picks_one_plane(tmp_path, stack_file):
    path, image, _ = stack_file
    result = invoke("baseline", path, "-o", tmp_path / "out", "--plane", "10", "--json")
    assert result.exit_code == 0, result.stderr
    labels = read_labels(json.loads(result.stdout)["outputs"]["labels"]).data
    assert labels.shape == image.shape[1:]


def test_z_spacing_option_overrides_the_file(tmp_path, stack_file):
    path, _, _ = stack_file
    result = invoke("baseline", path, "-o", tmp_path / "out", "--z-spacing", "3", "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["voxel_size"] == [3.0, 0.5, 0.5] and record["z_spacing"] == 6.0


def test_bad_stack_among_good_files_is_one_error_line(tmp_path, stack_file):
    path, _, _ = stack_file
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((4, 30, 30), np.uint16), imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "two.tif", np.zeros((2, 3, 30, 30), np.uint16), imagej=True,
                     metadata={"axes": "ZCYX"})
    result = invoke("baseline", path, tmp_path / "two.tif", tmp_path / "flat.tif", "-o", tmp_path / "out", "--json")
    assert result.exit_code == 1
    assert result.stderr.count("segtool: error: ") == 1
    assert "two.tif: " in result.stderr and "--channel N" in result.stderr and "Traceback" not in result.stderr
    records = {json.loads(line)["input"]: json.loads(line) for line in result.stdout.splitlines()}
    assert records[str(tmp_path / "flat.tif")]["objects"] == 0  # an empty stack is a result
    assert (tmp_path / "out" / "cells_labels.tif").exists() and not (tmp_path / "out" / "two_labels.tif").exists()


def test_evaluate_3d_agrees_with_brute_force(tmp_path):
    """3-D IoU matching of shifted balls gives the counts of an exhaustive search over assignments."""
    shape = (10, 24, 24)
    z, y, x = np.indices(shape)
    gt = np.zeros(shape, np.uint16)
    pred = np.zeros(shape, np.uint16)
    centres = [(3, 6, 6), (6, 16, 8), (5, 8, 17), (7, 18, 18)]
    for k, (cz, cy, cx) in enumerate(centres, start=1):
        gt[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= 12] = k
        shift = (k % 2, (k // 2) % 2, k // 3)  # 0 to 2 voxels off: IoUs from high to low
        pred[(z - cz - shift[0]) ** 2 + (y - cy - shift[1]) ** 2 + (x - cx - shift[2]) ** 2 <= 12] = 10 + k
    pred[0:2, 0:3, 20:23] = 99  # a false positive
    write_label_volume(tmp_path / "gt" / "a_masks.tif", gt, voxel_size=(2, 1, 1))
    write_label_volume(tmp_path / "pred" / "a_labels.tif", pred, voxel_size=(2, 1, 1))
    result = invoke("evaluate", tmp_path / "pred", tmp_path / "gt", "--thresholds", "0.1,0.3,0.5,0.7", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {round(r["threshold"], 2): r for r in report["total"]["per_threshold"]}
    found = []
    for t in (0.1, 0.3, 0.5, 0.7):
        tp = brute_force_matches(gt, pred, t)
        found.append(tp)
        assert rows[t]["tp"] == tp
        assert rows[t]["fp"] == 5 - tp and rows[t]["fn"] == 4 - tp
    assert found[0] == 4 and found[-1] < 4  # the thresholds tell the shifted objects apart


def test_measure_and_export_a_label_stack(tmp_path):
    labels = np.zeros((6, 20, 20), np.uint16)
    labels[1:4, 2:6, 2:8] = 3  # 3 planes x 4 x 6 = 72 voxels
    labels[2:6, 10:15, 10:13] = 5  # 4 x 5 x 3 = 60 voxels
    image = (labels * 10 + 1).astype(np.uint16)
    write_label_volume(tmp_path / "s_labels.tif", labels, voxel_size=(2.0, 0.5, 0.5), unit="micron")
    tifffile.imwrite(tmp_path / "s.tif", image, imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    result = invoke("export", tmp_path / "s_labels.tif", "-f", "csv,imagej-roi", "--image", tmp_path / "s.tif",
                    "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO((out / "s_objects.csv").read_text())))
    by_label = {int(r["label"]): r for r in rows}
    assert set(by_label) == {3, 5}
    assert float(by_label[3]["volume"]) == 72 and float(by_label[3]["volume_um3"]) == 72 * 2.0 * 0.25
    assert float(by_label[3]["centroid_z"]) == 2 and float(by_label[3]["centroid_z_um"]) == 4.0
    assert (int(by_label[5]["bbox_min_z"]), int(by_label[5]["bbox_max_z"])) == (2, 6)
    assert float(by_label[5]["mean_intensity"]) == 51
    expected = (6 * 60 * 0.5 / np.pi) ** (1 / 3)  # ball of 60 voxels of 0.5 um3
    assert float(by_label[5]["equivalent_diameter_um"]) == pytest.approx(expected)
    # ROIs: one per object per plane, each on its own slice (Fiji numbers planes from 1).
    with zipfile.ZipFile(out / "s_rois.zip") as archive:
        rois = [ImagejRoi.frombytes(archive.read(name)) for name in archive.namelist()]
    placed = sorted((int(r.name.split("-z")[0]), r.z_position, r.position) for r in rois)
    assert placed == [(3, 2, 2), (3, 3, 3), (3, 4, 4), (5, 3, 3), (5, 4, 4), (5, 5, 5), (5, 6, 6)]
    for roi in rois:
        label, z = int(roi.name.split("-z")[0]), roi.z_position - 1
        ys, xs = np.nonzero(labels[z] == label)
        corners = roi.coordinates()  # outline along pixel edges, (x, y)
        assert tuple(corners.min(axis=0)) == (xs.min(), ys.min())
        assert tuple(corners.max(axis=0)) == (xs.max() + 1, ys.max() + 1)


def test_geojson_of_a_stack_is_refused_with_a_reason(tmp_path):
    labels = np.zeros((3, 8, 8), np.uint16)
    labels[1, 2:4, 2:4] = 1
    write_label_volume(tmp_path / "s_labels.tif", labels)
    result = invoke("export", tmp_path / "s_labels.tif", "-f", "geojson", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "GeoJSON has no z coordinate" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_measure_summary_of_a_stack(tmp_path):
    labels = np.zeros((4, 10, 10), np.uint16)
    labels[0:2, 0:2, 0:2] = 1  # 8 voxels
    labels[2:4, 5:9, 5:9] = 2  # 32 voxels
    write_label_volume(tmp_path / "s_labels.tif", labels, voxel_size=(2.0, 1.0, 1.0))
    result = invoke("measure", tmp_path / "s_labels.tif", "--summary", "--json")
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["objects"] == 2 and row["mean_volume"] == 20 and row["coverage"] == 40 / 400
    assert row["mean_volume_px3"] == 40
    result = invoke("measure", tmp_path / "s_labels.tif", "--summary")
    assert result.exit_code == 0, result.stderr
    header, line = result.stdout.splitlines()
    assert header == "labels,objects,mean_volume,median_volume,coverage,mean_volume_px3"
    assert line.split(",")[1:] == ["2", "20", "20", "0.1", "40"]


def test_empty_label_stack_is_a_result(tmp_path):
    write_label_volume(tmp_path / "e_labels.tif", np.zeros((3, 8, 8), np.uint16))
    result = invoke("export", tmp_path / "e_labels.tif", "-f", "csv", "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["objects"] == 0
    text = (tmp_path / "out" / "e_objects.csv").read_text().splitlines()
    assert text[0].startswith("label,volume") and len(text) == 1


def test_baseline_extras_on_a_stack(tmp_path, stack_file):
    path, image, _ = stack_file
    result = invoke("baseline", path, "-o", tmp_path / "out", "--save-background", "--save-corrected", "--save-overlay",
                    "--json")
    assert result.exit_code == 0, result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    background = tifffile.imread(outputs["background"])
    corrected = tifffile.imread(outputs["corrected"])
    assert background.shape == corrected.shape == image.shape and background.dtype == np.float32
    np.testing.assert_allclose(background + corrected, image, atol=0.05)
    # Light falls with depth in the synthetic stack: the fitted background does too.
    assert background[0].mean() > background[-1].mean()
    from PIL import Image

    with Image.open(outputs["overlay"]) as overlay:
        assert overlay.size == (image.shape[2], image.shape[1]) and overlay.mode == "RGB"
