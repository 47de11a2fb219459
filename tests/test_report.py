"""The report's pure pieces: figures, robust z-scores, flags, histograms, thumbnails, the model header, the manifest."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from skimage.draw import disk

from segtool.errors import InputError, ModelError
from segtool.report.collect import entries_from_manifest, read_manifest
from segtool.report.flags import FlagOptions, flag_rows
from segtool.report.modelinfo import describe_model, read_model_header
from segtool.report.stats import label_figures, robust_z, saturated_share
from segtool.report.svg import histogram_svg
from segtool.report.thumbs import thumbnail


def _disks(shape, centres, radius):
    labels = np.zeros(shape, np.uint16)
    for i, centre in enumerate(centres, 1):
        labels[disk(centre, radius, shape=shape)] = i
    return labels


def test_label_figures_of_known_disks():
    labels = _disks((100, 100), [(30, 30), (70, 70), (3, 50)], 10)  # the third is cut by the top edge
    figures = label_figures(labels)
    assert figures["objects"] == 3
    areas = np.bincount(labels.ravel())[1:]
    assert figures["median_diameter"] == pytest.approx(np.median(np.sqrt(4 * areas / np.pi)))
    assert figures["median_diameter"] == pytest.approx(20, abs=1)  # the two whole disks set the median
    assert figures["coverage"] == pytest.approx(np.count_nonzero(labels) / labels.size)
    assert (figures["border_objects"], figures["border_share"]) == (1, pytest.approx(1 / 3))


def test_label_figures_of_a_stack_use_the_equivalent_sphere():
    labels = np.zeros((5, 20, 20), np.uint16)
    labels[1:4, 5:8, 5:8] = 7  # 27 voxels
    figures = label_figures(labels)
    assert figures["objects"] == 1 and figures["border_objects"] == 0
    assert figures["median_diameter"] == pytest.approx((6 * 27 / np.pi) ** (1 / 3))


def test_label_figures_of_an_empty_image():
    figures = label_figures(np.zeros((8, 8), np.uint16))
    assert figures == {"objects": 0, "median_diameter": None, "coverage": 0.0, "border_objects": 0, "border_share": 0.0}


def test_saturated_share_counts_the_pixels_at_the_top_value():
    image = np.arange(100, dtype=np.uint16).reshape(10, 10)
    assert saturated_share(image) == pytest.approx(0.01)
    clipped = np.minimum(image, 4095 // 50)  # 12-bit-like clipping at 81: 19 pixels at the top
    assert saturated_share(clipped) == pytest.approx(0.19)


def test_robust_z_ignores_the_outlier_it_finds():
    rng = np.random.default_rng(0)
    values = list(rng.normal(50, 5, 200)) + [500]
    z = robust_z(values)
    assert abs(z[-1]) > 50 and np.all(np.abs(z[:-1]) < 4.5)


def _row(objects, diameter=20.0, **extra):
    return {"status": "done", "objects": objects, "median_diameter": diameter if objects else None,
            "border_objects": 0, "border_share": 0.0, **extra}


def test_flags_name_each_problem_and_leave_the_rest_alone():
    rows = [_row(n, d) for n, d in zip((20, 22, 19, 21, 20, 23, 18), (19.0, 21.0, 20.0, 22.0, 18.0, 20.0, 21.0))]
    rows += [
        _row(0, empty_reason="flat image"),
        {"status": "failed", "error": "cannot read: truncated"},
        _row(200),                                                # count far from the run
        _row(20, 80.0, model_diameter=20.0),                      # 4x the training size
        _row(20, 40.0, model_diameter=20.0, scale=0.5),           # 40 px brought to 20 px: fine for the model
        _row(20, saturated_share=0.05),
        {**_row(20), "border_objects": 12, "border_share": 0.6},
        {**_row(20), "border_objects": 2, "border_share": 0.9},   # too few to count
    ]
    flags = flag_rows(rows)
    kinds = [[f.kind for f in row] for row in flags]
    assert kinds[:7] == [[]] * 7
    assert kinds[7] == ["empty"] and "flat image" in flags[7][0].reason
    assert kinds[8] == ["failed"] and "truncated" in flags[8][0].reason
    assert kinds[9] == ["count"] and "200 objects" in flags[9][0].reason
    assert kinds[10] == ["size-model", "size"] and "4.0x larger" in flags[10][0].reason
    assert kinds[11] == ["size"]  # still far from the run, but not from the model
    assert kinds[12] == ["saturated"] and "5.0%" in flags[12][0].reason
    assert kinds[13] == ["border"] and "12 of 20" in flags[13][0].reason
    assert kinds[14] == []


def test_flags_need_a_run_to_compare_with():
    rows = [_row(5), _row(500), _row(6)]
    assert flag_rows(rows) == [[], [], []]
    assert [f.kind for f in flag_rows(rows, options=FlagOptions(min_run=3))[1]] == ["count"]


def test_histogram_svg_bars_add_up_and_stay_local():
    values = [1, 2, 2, 3, 3, 3, 40]
    svg = histogram_svg(values, title="objects <per> image", xlabel="n", bins=5, marker=10, marker_label="model")
    counts = [int(t.split(": ")[1].split("<")[0]) for t in svg.split("<title>")[1:]]
    assert sum(counts) == len(values)
    assert "&lt;per&gt;" in svg and "http" not in svg and "href" not in svg


def test_thumbnail_keeps_small_objects_visible_when_shrinking():
    labels = np.zeros((1024, 1024), np.uint16)
    labels[500:504, 500:504] = 1  # 4 px across: one thumbnail pixel
    rgb = thumbnail(labels, np.zeros((1024, 1024), np.uint8), size=128)
    assert rgb.shape == (128, 128, 3)
    assert rgb.max(axis=2)[62:64, 62:64].any() and rgb.max(axis=2)[:50].max() == 0


def test_thumbnail_refuses_mismatched_arrays():
    with pytest.raises(InputError, match="same shape"):
        thumbnail(np.zeros((4, 4), np.uint16), np.zeros((4, 5)))


def test_model_header_reads_shipped_models_without_torch():
    code = ("import sys; from segtool.report.modelinfo import describe_model; "
            "import segtool.report.build, segtool.report.task, segtool.report.collect; "
            "info = describe_model('nuclei'); print(info['median_diameter'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["20.96", "False"]


def test_model_header_agrees_with_the_torch_reader():
    from segtool.model.modelinfo import read_model_info
    from segtool.model.shipped import find_shipped_model

    path = find_shipped_model("nuclei-he")
    header, info = read_model_header(path), read_model_info(path)
    assert header["metadata"] == info["metadata"]
    assert header["config"]["postprocess"] == info["config"]["postprocess"]


def test_model_header_refuses_other_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="junk.pt"):
        read_model_header(junk)
    assert describe_model(str(tmp_path / "missing.pt"))["error"]


def test_manifest_errors_name_the_line(tmp_path):
    manifest = tmp_path / "run.jsonl"
    manifest.write_text(json.dumps({"input": "a.tif", "status": "done"}) + "\n\n{oops\n")
    with pytest.raises(InputError, match="line 3 is not JSON"):
        read_manifest(manifest)
    manifest.write_text(json.dumps({"objects": 3}) + "\n")
    with pytest.raises(InputError, match="line 1 is not a segtool result"):
        read_manifest(manifest)


def test_manifest_paths_are_found_beside_the_manifest(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a_labels.tif").write_bytes(b"x")
    (tmp_path / "a.tif").write_bytes(b"x")
    monkeypatch.chdir(tmp_path.parent)
    records = [{"input": "a.tif", "status": "done", "outputs": {"labels": "out/a_labels.tif", "prob": "out/a_prob.tif"}}]
    (entry,) = entries_from_manifest(records, base=tmp_path)
    assert entry.labels == tmp_path / "out" / "a_labels.tif" and entry.image == tmp_path / "a.tif"
    assert entry.outputs["prob"].name == "a_prob.tif"  # not there: the page will not link it
