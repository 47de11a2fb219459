"""predict's network on onnxruntime (segtool.infer.onnxbackend): the copy, the choice, and the same labels as torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from segtool.model.modelfile import save_model
from segtool.infer.onnxbackend import (
    BACKEND_ENV,
    CACHE_ENV,
    LARGE_BATCH_PIXELS,
    OnnxNet,
    load_onnx_model,
    onnx_copy_path,
    prefer_onnxruntime,
    write_onnx_copy,
)
from tests.helpers import invoke, random_unet

onnxruntime = pytest.importorskip("onnxruntime")  # the [onnx] extra

ROOT = Path(__file__).resolve().parents[1]


class _FakeSession:
    """An onnxruntime session stand-in: 'maps' = (x, 2x) for each pixel, and the batches it saw."""

    def __init__(self):
        self.seen = []

    def get_inputs(self):
        return [type("Input", (), {"name": "image"})()]

    def run(self, outputs, feeds):
        x = feeds["image"]
        self.seen.append(x.shape)
        return [np.concatenate([x, 2 * x], axis=1)]


def test_predictor_runs_the_session_and_tta_undoes_its_transforms():
    session = _FakeSession()
    net = OnnxNet(session)
    batch = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    plain = net.predictor()(batch)
    np.testing.assert_array_equal(plain, np.concatenate([batch, 2 * batch], axis=1))
    # a pointwise network commutes with flips and rotations: the average of the 8 is the plain answer
    np.testing.assert_allclose(net.predictor(tta=True)(batch), plain, atol=1e-6)
    assert len(session.seen) == 1 + 8
    rect = np.random.default_rng(1).random((1, 1, 8, 12), dtype=np.float32)
    np.testing.assert_allclose(net.predictor(tta=True)(rect), np.concatenate([rect, 2 * rect], axis=1), atol=1e-6)
    assert len(session.seen) == 1 + 8 + 4


def test_large_batches_go_to_the_other_predictor():
    calls = []

    def large(tta):
        return lambda batch: calls.append(batch.shape) or np.zeros((batch.shape[0], 2) + batch.shape[2:], np.float32)

    session = _FakeSession()
    predictor = OnnxNet(session, large=large).predictor()
    side = int(np.ceil(np.sqrt(LARGE_BATCH_PIXELS)))
    predictor(np.zeros((1, 1, side, side), np.float32))
    predictor(np.zeros((1, 1, 64, 64), np.float32))
    assert calls == [(1, 1, side, side)]
    assert session.seen == [(1, 1, 64, 64)]


def test_the_choice(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert prefer_onnxruntime(device="cpu", precision="fp32")
    assert prefer_onnxruntime(device="cpu", precision="auto")
    assert not prefer_onnxruntime(device="cpu", precision="bf16")  # onnxruntime computes in float32
    assert not prefer_onnxruntime(device="cuda", precision="auto")
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert not prefer_onnxruntime(device="cpu", precision="fp32")


def test_copy_reproduces_torch_maps(tmp_path, monkeypatch):
    import torch

    from segtool.infer.network import make_predictor, prepare_for_inference

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    model = random_unet("three_class_distance", depth=2, base=4)
    path = tmp_path / "m.pt"
    save_model(path, model.net, model.config)
    assert load_onnx_model(path) is None  # no copy yet
    copy = write_onnx_copy(path)
    assert copy == onnx_copy_path(path) and copy.is_file()
    onnx = load_onnx_model(path, threads=1)
    batch = np.random.default_rng(0).random((2, 1, 48, 40), dtype=np.float32)
    with torch.no_grad():
        expected = make_predictor(prepare_for_inference(model.net, precision="fp32"), model.config.target)(batch)
    got = make_predictor(onnx.net, onnx.config.target)(batch)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert onnx.config == model.config
    # an edited model file is another file: its copy is not the old one
    save_model(path, random_unet("three_class_distance", depth=2, base=4, seed=1).net, model.config, overwrite=True)
    assert load_onnx_model(path) is None


def test_predict_on_onnxruntime_gives_torch_labels_without_importing_torch(tmp_path, monkeypatch):
    from skimage.draw import disk

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(BACKEND_ENV)
    image = np.full((96, 120), 10, np.uint8)
    for centre in [(20, 20), (50, 70), (75, 30), (30, 95)]:
        image[disk(centre, 9)] = 200
    tifffile.imwrite(tmp_path / "img.tif", image)
    # First run: torch, then the copy is written.
    first = invoke("predict", tmp_path / "img.tif", "-m", "nuclei", "-o", tmp_path / "torch", "--precision", "fp32")
    assert first.exit_code == 0, first.output
    assert "onnxruntime copy" in first.stderr
    # Second run, a fresh process: onnxruntime, no torch.
    wrapper = ("import sys\nfrom segtool.cli import main\ntry:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
               "print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\nsys.exit(code)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", wrapper, "predict", str(tmp_path / "img.tif"), "-o",
                           str(tmp_path / "onnx"), "--precision", "fp32"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torch imported: False" in done.stderr
    torch_labels = tifffile.imread(tmp_path / "torch" / "img_labels.tif")
    onnx_labels = tifffile.imread(tmp_path / "onnx" / "img_labels.tif")
    assert torch_labels.max() >= 3
    np.testing.assert_array_equal(onnx_labels, torch_labels)


def test_warm_large_loads_the_torch_side_on_a_thread_only_for_large_images():
    calls = []
    net = OnnxNet(_FakeSession(), large=lambda tta: calls.append(tta))
    net.warm_large(64 * 64)
    assert net._warming is None and calls == []
    net.warm_large(LARGE_BATCH_PIXELS)
    net._warming.join(timeout=10)
    net.warm_large(LARGE_BATCH_PIXELS)  # once
    net._warming.join(timeout=10)
    assert calls == [False]
    OnnxNet(_FakeSession()).warm_large(LARGE_BATCH_PIXELS)  # no torch side: nothing to load
