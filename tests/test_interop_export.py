"""Exports that travel: the stand-alone network, TorchScript, ONNX, bioimage.io packages, and reading them back."""

from __future__ import annotations

import json
import sys
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from segtool.cli.application import app
from segtool.errors import ModelError
from segtool.interop.bioimageio_unet import SegtoolUNet
from segtool.interop.netexport import EXPORT_TOLERANCE, export_checked, export_onnx
from segtool.model.config import UNetConfig
from segtool.model.model import UNet
from segtool.model.modelfile import LoadedModel, load_model, save_model

runner = CliRunner()


def _random_model(target="three_class_distance", depth=2, base=4, in_channels=1, seed=0):
    """A small U-Net with random weights and non-trivial BatchNorm statistics, as a loaded model."""
    torch.manual_seed(seed)
    config = UNetConfig(depth=depth, base_channels=base, target=target, in_channels=in_channels, patch_size=32,
                        postprocess={"min_size": 5})
    net = UNet(config)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return LoadedModel(net=net.eval(), config=config, metadata={"test": True})


def _plain_reference(model, batch):
    """segtool's own network and output activation, written out here: softmax classes, sigmoid distance."""
    with torch.no_grad():
        logits = model.net(torch.from_numpy(batch))
    if model.config.target == "three_class":
        return torch.softmax(logits, 1).numpy()
    if model.config.target == "distance":
        return torch.sigmoid(logits).numpy()
    return torch.cat([torch.softmax(logits[:, :3], 1), torch.sigmoid(logits[:, 3:])], 1).numpy()


@pytest.mark.parametrize("target", ["three_class", "distance", "three_class_distance"])
def test_standalone_network_loads_segtool_weights_and_activates(target):
    model = _random_model(target)
    config = model.config
    net = SegtoolUNet(in_channels=1, depth=config.depth, base_channels=config.base_channels, target=target)
    net.load_state_dict(model.net.state_dict(), strict=True)
    batch = np.random.default_rng(1).random((2, 1, 12, 20), dtype=np.float32)
    with torch.no_grad():
        out = net.eval()(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(out, _plain_reference(model, batch), atol=1e-6)
    assert out.min() >= 0 and out.max() <= 1
    if target != "distance":
        np.testing.assert_allclose(out[:, :3].sum(axis=1), 1, atol=1e-5)  # probabilities inside the network


def test_standalone_network_rejects_unknown_target():
    with pytest.raises(ValueError, match="unknown target"):
        SegtoolUNet(target="blobs")


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=pytest.mark.slow)])
def test_export_matches_pytorch_on_other_batch_and_sizes(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")  # the [onnx] extra (installed by the README set-up; a skip fails under CI)
        pytest.importorskip("onnxscript")
    model = _random_model()
    path = tmp_path / f"net.{fmt}"
    test_batch = np.random.default_rng(2).random((1, 1, 16, 24), dtype=np.float32)
    check = export_checked(model, path, fmt, test_batch)
    assert path.is_file() and check.max_abs_diff <= EXPORT_TOLERANCE
    # sizes the exporter never saw: batch 3, 20 x 36 (multiples of 2**depth = 4)
    other = np.random.default_rng(3).random((3, 1, 20, 36), dtype=np.float32)
    if fmt == "torchscript":
        with torch.no_grad():
            got = torch.jit.load(str(path))(torch.from_numpy(other)).numpy()
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: other})[0]
    assert got.shape == (3, 4, 20, 36)
    assert np.abs(got - _plain_reference(model, other)).max() <= 1e-4


def test_export_refuses_to_overwrite(tmp_path):
    model = _random_model()
    path = tmp_path / "net.pt"
    path.write_bytes(b"keep")
    with pytest.raises(Exception, match="exists"):
        export_checked(model, path, "torchscript", np.zeros((1, 1, 8, 8), np.float32))
    assert path.read_bytes() == b"keep"


def test_missing_onnx_extra_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now fails as if not installed
    with pytest.raises(ModelError, match=r"pip install 'segtool\[onnx\]'"):
        export_onnx(_random_model(), tmp_path / "net.onnx")
    assert not (tmp_path / "net.onnx").exists()


def test_cli_exports_torchscript_and_reports_the_check(tmp_path):
    model = _random_model()
    model_path = save_model(tmp_path / "tiny.pt", model.net, model.config, metadata={})
    out = tmp_path / "tiny_ts.pt"
    result = runner.invoke(app, ["model", "export", str(model_path), "--format", "torchscript", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "matches PyTorch" in result.stderr
    scripted = torch.jit.load(str(out))
    batch = np.random.default_rng(4).random((1, 1, 16, 16), dtype=np.float32)
    with torch.no_grad():
        assert np.abs(scripted(torch.from_numpy(batch)).numpy() - _plain_reference(model, batch)).max() <= 1e-4
    again = runner.invoke(app, ["model", "export", str(model_path), "--format", "torchscript", "-o", str(out)])
    assert again.exit_code == 1
    assert again.stderr.count("\n") == 1 and "overwrite" in again.stderr and "Traceback" not in again.stderr


# --------------------------------------------------------------------------- bioimage.io packages


def _export_tiny_package(tmp_path, target="three_class_distance"):
    pytest.importorskip("bioimageio.spec")  # the [bioimageio] extra (a skip fails under CI)
    from segtool.interop.bioimageio import export_bioimageio
    from segtool.synthetic import make_nuclei_image

    model = _random_model(target)
    image, _ = make_nuclei_image((40, 52), n_nuclei=4, radius_range=(4, 6), seed=1)
    path = export_bioimageio(model, tmp_path / "tiny.zip", image, source_name="tiny")
    return model, image, path


def test_package_holds_the_declared_files_and_names_outputs(tmp_path):
    ruyaml = pytest.importorskip("ruyaml")  # comes with the [bioimageio] extra

    model, image, path = _export_tiny_package(tmp_path)
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        rdf = ruyaml.YAML(typ="safe", pure=True).load(archive.read("rdf.yaml"))
        test_input = np.load(archive.open("test_input.npy"))
        test_output = np.load(archive.open("test_output.npy"))
        readme = archive.read("README.md").decode()
    assert {"rdf.yaml", "weights.pt", "segtool_unet.py", "weights_torchscript.pt", "test_input.npy",
            "test_output.npy", "cover.png", "README.md", "segtool_model.json"} <= names
    assert rdf["format_version"].startswith("0.5")
    axes = rdf["inputs"][0]["axes"]
    assert [a["type"] for a in axes] == ["batch", "channel", "space", "space"]
    assert axes[2]["size"] == {"min": 4, "step": 4} == axes[3]["size"]  # 2**depth
    assert rdf["inputs"][0]["preprocessing"][0]["id"] == "scale_range"
    assert rdf["inputs"][0]["preprocessing"][0]["kwargs"]["max_percentile"] == model.config.norm_high
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["background", "interior", "boundary", "distance"]
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}
    # the test tensors: a centred crop of the raw image to multiples of 4, and maps that are probabilities
    assert test_input.shape == (1, 1, 40, 52) and np.array_equal(test_input[0, 0], image.astype(np.float32))
    np.testing.assert_allclose(test_output[:, :3].sum(axis=1), 1, atol=1e-5)
    assert "not in this package" in readme and "watershed" in readme


@pytest.mark.slow
def test_tiny_package_passes_bioimageio_test_model(tmp_path):
    test_model = pytest.importorskip("bioimageio.core").test_model

    _, _, path = _export_tiny_package(tmp_path, target="three_class")
    summary = test_model(path)
    assert summary.status == "passed", summary.format() if hasattr(summary, "format") else summary


def test_predict_reads_segtool_package_like_the_pt(tmp_path):
    from segtool.infer.predict import predict_image

    model, image, path = _export_tiny_package(tmp_path)
    loaded = load_model(path)
    assert loaded.config == model.config
    for name, tensor in model.net.state_dict().items():
        assert torch.equal(loaded.net.state_dict()[name], tensor), name
    np.testing.assert_array_equal(predict_image(image, loaded).labels, predict_image(image, model).labels)


def test_foreign_package_is_explained_in_one_line(tmp_path):
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\nformat_version: 0.5.4\nweights:\n  onnx:\n    source: m.onnx\n")
        archive.writestr("m.onnx", b"0")
    with pytest.raises(ModelError, match=r"not written by segtool \(weights: onnx\).*segtool_model.json"):
        load_model(foreign)
    images = tmp_path / "img.tif"
    import tifffile

    tifffile.imwrite(images, np.zeros((32, 32), np.uint8))
    result = runner.invoke(app, ["predict", "-m", str(foreign), str(images), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.startswith("segtool: error: ") and result.stderr.count("\n") == 1
    assert "bioimage.io model package not written by segtool" in result.stderr


def test_zip_without_rdf_is_not_a_package(tmp_path):
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ModelError, match="not a readable segtool model file"):
        load_model(plain)


def test_damaged_segtool_package_names_the_file(tmp_path):
    _, _, path = _export_tiny_package(tmp_path)
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "segtool_model.json":
                data = json.dumps({"format": "something-else"}).encode()
            dst.writestr(item, data)
    with pytest.raises(ModelError, match="segtool_model.json does not describe a segtool U-Net"):
        load_model(damaged)


@pytest.mark.slow
def test_shipped_model_package_passes_test_model_and_predicts_the_same_labels(tmp_path, sample_images):
    test_model = pytest.importorskip("bioimageio.core").test_model

    from segtool.io import read_image
    from segtool.infer.predict import find_packaged_model, predict_image

    out = tmp_path / "nuclei.zip"
    result = runner.invoke(app, ["model", "export", "--format", "bioimageio", "-o", str(out),
                                 "--sample", str(sample_images[0])])
    assert result.exit_code == 0, result.output
    summary = test_model(out)
    assert summary.status == "passed"
    original, packaged = load_model(find_packaged_model()), load_model(out)
    for path in sample_images:
        image = read_image(path).data
        expected = predict_image(image, original).labels
        assert expected.max() > 5  # a real segmentation, not an empty one
        np.testing.assert_array_equal(predict_image(image, packaged).labels, expected)


def test_missing_bioimageio_extra_gives_one_line_install_hint(tmp_path, monkeypatch):
    model = _random_model()
    model_path = save_model(tmp_path / "tiny.pt", model.net, model.config, metadata={})
    monkeypatch.setitem(sys.modules, "bioimageio.spec", None)  # import now fails as if not installed
    out = tmp_path / "tiny.zip"
    result = runner.invoke(app, ["model", "export", str(model_path), "-o", str(out)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "pip install 'segtool[bioimageio]'" in result.stderr
    assert not out.exists()
