"""The pretrained nuclei model shipped inside the package."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from segtool.cli.application import app
from segtool.io import read_image, read_labels
from segtool.metrics import match_labels
from segtool.model.modelfile import load_model
from segtool.infer.predict import find_packaged_model, predict_image

runner = CliRunner()


@pytest.fixture(scope="module")
def shipped():
    return load_model(find_packaged_model())


def test_shipped_model_is_small_and_loads(shipped):
    path = find_packaged_model()
    assert path.name == "nuclei.pt" and path.stat().st_size < 8 * 2**20
    assert shipped.config.in_channels == 1
    assert shipped.config.target in ("three_class", "distance", "three_class_distance")


def test_model_card_fields(shipped):
    meta = shipped.metadata
    for key in ("segtool_version", "command", "epochs_run", "validation", "training_data", "median_diameter"):
        assert key in meta, key
    assert meta["training_data"]["images"] > 300
    assert "segtool train" in meta["command"]
    assert 0 < meta["validation"]["f1_iou50"] <= 1
    assert set(shipped.config.postprocess) >= {"prob_threshold", "seed_threshold", "min_size"}
    # the card written by bench/model_card.py: data licence, training time and the test split's scores
    card = meta["card"]
    assert card["licence"] and "dsb2018" in card["dataset"] and "min" in card["training_time"]
    assert card["test"]["images"] == 61 and card["test"]["objects"] > 2000
    assert len(card["test"]["ap_curve"]) == 10 and card["test"]["ap_curve"][0] == card["test"]["ap_iou50"]
    assert card["test"]["ap_curve"] == sorted(card["test"]["ap_curve"], reverse=True)


def test_model_info_prints_the_card():
    result = runner.invoke(app, ["model", "info"])
    assert result.exit_code == 0, result.stderr
    for label in ("command", "validation", "licence: CC0", "training time", "test scores", "AP@0.7", "AP curve"):
        assert label in result.stdout, label


@pytest.mark.parametrize("name", ["nuclei_2c840a94d216", "nuclei_29dd28df98ee"])
def test_shipped_model_segments_sample_images(shipped, sample_images, name):
    image = read_image(next(p for p in sample_images if p.stem == name)).data
    truth = read_labels(next(p for p in sample_images if p.stem == name).parent.parent / "masks" / f"{name}.tif").data
    result = predict_image(image, shipped)
    f1 = float(match_labels(truth, result.labels, thresholds=(0.5,)).f1[0])
    # The shipped model scores 0.97 and 0.95; a broken pipeline (bad normalisation, wrong weights,
    # broken stitching) scores far below 0.7.
    assert f1 >= 0.7, f1


def test_shipped_model_handles_16bit_and_blank_images(shipped, sample_images):
    image = read_image(sample_images[0]).data
    as16 = image.astype(np.uint16) * 257 + 1000  # same picture, 16-bit range with an offset
    labels8 = predict_image(image, shipped).labels
    labels16 = predict_image(as16, shipped).labels
    agreement = match_labels(labels8, labels16, thresholds=(0.5,))
    assert float(agreement.f1[0]) > 0.95  # percentile normalisation makes the dtype irrelevant
    blank = predict_image(np.zeros((100, 130), np.uint16), shipped)
    assert blank.labels.shape == (100, 130) and blank.n_objects == 0


def test_predict_without_model_uses_shipped_one(tmp_path, sample_images):
    result = runner.invoke(app, ["predict", str(sample_images[0]), "-o", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["objects"] > 5
    assert read_labels(record["outputs"]["labels"]).data.max() == record["objects"]


def test_model_info_defaults_to_shipped_model():
    result = runner.invoke(app, ["model", "info", "--json"])
    assert result.exit_code == 0, result.stderr
    details = json.loads(result.stdout)
    assert "three_class" in json.dumps(details) or "distance" in json.dumps(details)
