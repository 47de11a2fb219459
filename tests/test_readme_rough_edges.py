"""The rough edges a new user hit following the README (issue #38), one test or more each.

Point 1 (exporting a model with an input transform) is in test_export_transforms.py; the README running in order
is test_readme_examples.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import invoke

from segtool.baseline import contrast_hint
from segtool.inputs import expand_inputs
from segtool.measure import object_table
from segtool.intake import STAIN_RGB

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _nuclei(shape=(96, 96), seed=0):
    from segtool.synthetic import make_nuclei_image

    image, _ = make_nuclei_image(shape, seed=seed)
    return ((image - image.min()) / np.ptp(image) * 4000).astype(np.uint16)


# 2. Examples run in order; a pipeline passes on only finished results


def test_readme_pipeline_passes_on_only_finished_results(tmp_path):
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (the README's pipeline uses it)")
    line = next(x for x in README.splitlines() if x.startswith("find data") and "segtool export - -f csv" in x)
    (tmp_path / "data" / "a").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "data" / "a" / "good.tif", _nuclei())
    (tmp_path / "data" / "a" / "broken.tif").write_bytes(b"not a tiff at all")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "segtool").write_text(f"#!/bin/sh\nexec {sys.executable} -m segtool \"$@\"\n")
    (shim / "segtool").chmod(0o755)
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    done = subprocess.run(["bash", "-c", "set -o pipefail\n" + line], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    # the broken image fails in segtool (exit 1, shown by pipefail); nothing becomes the path "null" downstream
    assert done.returncode == 1, done.stderr
    assert "broken.tif" in done.stderr and "null" not in done.stderr, done.stderr
    assert (tmp_path / "seg" / "good_objects.csv").exists()


# 3. A folder whose images are in sub-folders


def test_folder_with_images_only_below_names_recursive(tmp_path):
    (tmp_path / "data" / "plate1").mkdir(parents=True)
    (tmp_path / "data" / "plate2").mkdir()
    for name in ("plate1/a.tif", "plate1/b.tif", "plate2/c.tif"):
        tifffile.imwrite(tmp_path / "data" / name, np.zeros((8, 8), np.uint8))
    found = expand_inputs([str(tmp_path / "data")])
    assert found.files == []
    assert "no image files" in found.problems[0][1] and "sub-folders hold 3 (add --recursive)" in found.problems[0][1]
    assert len(expand_inputs([str(tmp_path / "data")], recursive=True).files) == 3
    (tmp_path / "empty" / "below").mkdir(parents=True)
    assert "--recursive" not in expand_inputs([str(tmp_path / "empty")]).problems[0][1]


def test_cli_error_for_a_folder_of_folders_is_one_line_naming_recursive(tmp_path):
    (tmp_path / "data" / "plate1").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "data" / "plate1" / "a.tif", _nuclei((32, 32)))
    result = invoke("baseline", tmp_path / "data", "-o", tmp_path / "seg")
    assert result.exit_code == 1
    assert result.stderr.count("segtool: error:") == 1 and "add --recursive" in result.stderr


# 4. The training example's data, and a bad data argument is a bad command line


@pytest.mark.parametrize("args", [["no_such_folder"], ["a", "b", "c"]])
def test_train_with_a_bad_data_argument_exits_2_in_one_line(tmp_path, args):
    result = invoke("train", *[tmp_path / a for a in args], "-o", tmp_path / "m.pt")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("segtool: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "give IMAGES and MASKS" in result.stderr or "2 arguments" in result.stderr
    assert not (tmp_path / "m.pt").exists()


def test_readme_trains_only_on_data_a_user_has():
    train_lines = [x for x in README.splitlines() if x.lstrip().startswith("segtool train ")]
    assert train_lines and not any("shared/" in x for x in train_lines)


def test_train_help_lists_every_mask_ending():
    from segtool.pairing import MASK_SUFFIXES

    text = " ".join(invoke("train", "--help").stdout.split())
    for ending in MASK_SUFFIXES:
        assert ending in text, ending


# 5. A colour H&E image given to baseline


def _stained_rgb(shape=(160, 160), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    amount = np.zeros(shape)
    for _ in range(25):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(5, 9)
        amount[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1.0
    density = amount * STAIN_RGB[0][:, None, None] + 0.3 * STAIN_RGB[1][:, None, None]
    density += rng.normal(0, 0.02, density.shape)
    return np.moveaxis(np.clip(np.round(255 * 10.0 ** -density), 0, 255).astype(np.uint8), 0, -1)


def test_baseline_on_an_he_image_says_how_to_read_it(tmp_path):
    path = tmp_path / "he.tif"
    tifffile.imwrite(path, _stained_rgb(), photometric="rgb")
    result = invoke("baseline", path, "-o", tmp_path / "seg", "--json")
    assert result.exit_code == 0
    notes = [x for x in result.stderr.splitlines() if x.startswith("segtool: note:")]
    assert len(notes) == 1 and "--polarity auto" in notes[0] and "predict -m nuclei-he" in notes[0], result.stderr
    record = json.loads(result.stdout)
    labels = tifffile.imread(record["outputs"]["labels"])
    assert np.bincount(labels.ravel())[1:].max() > labels.size / 2  # the note's claim, checked on the labels
    # read the right way round, the same image gives no note
    result = invoke("baseline", path, "-o", tmp_path / "seg2", "--polarity", "auto")
    assert result.exit_code == 0 and "note:" not in result.stderr


def test_no_hint_for_ordinary_nuclei(tmp_path):
    path = tmp_path / "fluo.tif"
    tifffile.imwrite(path, _nuclei((128, 128)))
    result = invoke("baseline", path, "-o", tmp_path / "seg")
    assert result.exit_code == 0 and "note:" not in result.stderr


def test_contrast_hint_names_the_other_polarity():
    labels = np.zeros((10, 10), np.uint16)
    labels[:6] = 1
    assert "dark on a bright background" in contrast_hint(labels, "bright")
    assert "bright on a dark background" in contrast_hint(labels, "dark")
    labels[:6] = 0
    assert contrast_hint(labels, "bright") is None


# Smaller ones


def test_readme_json_sample_has_the_keys_predict_writes(tmp_path):
    start = README.index("A `--json` line looks like this")
    block = README[README.index("```json", start) + len("```json"):]
    sample = json.loads(block[:block.index("```")].strip())
    image = ROOT / "sample_data" / "images" / "nuclei_4ee5850b6354.tif"
    result = invoke("predict", image, "-o", tmp_path / "out", "--json", "--save-prob", "--save-overlay")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert list(record) == list(sample)
    assert list(record["stage_seconds"]) == list(sample["stage_seconds"])
    assert record["objects"] == sample["objects"] and record["tiles"] == sample["tiles"]


def test_band_mode_json_has_empty_reason(tmp_path):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, _nuclei((128, 128)))
    result = invoke("predict", path, "-o", tmp_path / "out", "--bands", "--json", "--threads", "1")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["bands"] > 0 and "empty_reason" in record and record["empty_reason"] is None


def test_cluster_is_not_contacted_when_no_input_exists(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    import segtool.distributed.cluster as cluster

    def refuse(*args, **kwargs):
        raise AssertionError("connected to a cluster although no input exists")

    monkeypatch.setattr(cluster, "connect", refuse)
    result = invoke("baseline", tmp_path / "missing.tif", "-o", tmp_path / "seg", "--cluster", "tcp://10.255.255.1:8786")
    assert result.exit_code == 1
    assert "missing.tif" in result.stderr and "no such file" in result.stderr


def test_integrated_intensity_of_an_integer_image_is_exact():
    labels = np.zeros((20, 20), np.uint16)
    labels[2:9, 3:12] = 1  # 63 pixels
    image = np.zeros((20, 20), np.uint8)
    image[2:9, 3:12] = np.arange(63, dtype=np.uint8).reshape(7, 9) + 100
    table = object_table(labels, image=image)
    expected = int(image[labels == 1].astype(np.int64).sum())
    assert table["integrated_intensity"][0] == expected and repr(float(table["integrated_intensity"][0])) == f"{expected}.0"
