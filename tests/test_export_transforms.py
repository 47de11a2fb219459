"""Exports of models with an input transform: the transform and the normalisation travel inside the network.

The reference is always segtool itself (``segtool predict --save-prob``, or its normalisation followed by the
plain network), never the exported file's own output.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from helpers import invoke

from segtool.interop.bioimageio_unet import SegtoolUNet, percentile_rows
from segtool.interop.netexport import build_export_net, export_checked, reference_output
from segtool.model.config import UNetConfig
from segtool.intake import STAIN_RGB
from segtool.model.model import UNet
from segtool.model.modelfile import LoadedModel
from segtool.infer.predict import normalize_for_model


def _stained_rgb(shape=(96, 128), seed=0) -> np.ndarray:
    """8-bit RGB of hematoxylin discs on a light eosin background, as transmitted light gives it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    amount = np.zeros(shape)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(5, 10)
        amount[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.6, 1.2)
    density = amount * STAIN_RGB[0][:, None, None] + 0.2 * STAIN_RGB[1][:, None, None]
    density = density + rng.normal(0, 0.01, density.shape)
    return np.clip(np.round(255 * 10.0 ** -density), 0, 255).astype(np.uint8)


def _plain_maps(model, image) -> np.ndarray:
    """segtool's transform + normalisation, then the network with its activation but no transform."""
    config = model.config
    plain = SegtoolUNet(in_channels=config.in_channels, depth=config.depth, base_channels=config.base_channels,
                        target=config.target)
    plain.load_state_dict(model.net.state_dict())
    return reference_output(plain.eval(), normalize_for_model(image, model)[np.newaxis])


def test_percentile_rows_interpolates_like_numpy():
    rows = np.random.default_rng(0).random((3, 101), dtype=np.float32)
    for q in (0.0, 1.0, 37.3, 99.8, 100.0):
        got = percentile_rows(torch.from_numpy(rows), q).numpy()
        np.testing.assert_allclose(got, np.percentile(rows, q, axis=1), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("transform", ["inverted", "hematoxylin"])
def test_exported_network_applies_the_transform_and_normalisation_segtool_applies(transform):
    torch.manual_seed(0)
    config = UNetConfig(depth=2, base_channels=4, patch_size=32, input=transform, target="three_class_distance")
    model = LoadedModel(net=UNet(config).eval(), config=config, metadata={})
    image = _stained_rgb((32, 48)) if transform == "hematoxylin" else _stained_rgb((32, 48))[1]
    net = build_export_net(model)
    got = reference_output(net, image.astype(np.float32)[np.newaxis] if image.ndim == 3
                           else image.astype(np.float32)[np.newaxis, np.newaxis])
    np.testing.assert_allclose(got, _plain_maps(model, image), atol=1e-5)


def test_torchscript_of_an_inverted_model_passes_the_check(tmp_path):
    torch.manual_seed(1)
    config = UNetConfig(depth=2, base_channels=4, patch_size=32, input="inverted")
    model = LoadedModel(net=UNet(config).eval(), config=config, metadata={})
    image = _stained_rgb((32, 32))[0]
    check = export_checked(model, tmp_path / "inv.pt", "torchscript", image.astype(np.float32)[None, None])
    scripted = torch.jit.load(str(tmp_path / "inv.pt"))
    with torch.inference_mode():
        got = scripted(torch.from_numpy(image.astype(np.float32)[None, None])).numpy()
    assert check.max_abs_diff < 1e-4
    np.testing.assert_allclose(got, _plain_maps(model, image), atol=1e-4)


def test_float_rgb_sample_above_one_is_refused_in_one_line(tmp_path):
    sample = tmp_path / "float_rgb.tif"
    tifffile.imwrite(sample, np.moveaxis(_stained_rgb((64, 64)), 0, -1).astype(np.float32), photometric="rgb")
    out = tmp_path / "he.pt"
    result = invoke("model", "export", "nuclei-he", "--format", "torchscript", "-o", out, "--sample", sample)
    assert result.exit_code == 1
    assert result.stderr.startswith("segtool: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "floating-point RGB sample" in result.stderr and "white level" in result.stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def he_reference(tmp_path_factory):
    """An RGB image and the maps `segtool predict -m nuclei-he` gives for it (float32, whole image)."""
    folder = tmp_path_factory.mktemp("he")
    image = _stained_rgb((96, 128))
    path = folder / "he.tif"
    tifffile.imwrite(path, np.moveaxis(image, 0, -1), photometric="rgb")
    result = invoke("predict", path, "-m", "nuclei-he", "-o", folder / "pred", "--save-prob", "--precision", "fp32",
                    "--threads", "2")
    assert result.exit_code == 0, result.output
    maps = tifffile.imread(folder / "pred" / "he_prob.tif")
    assert maps.shape == (4, 96, 128) and maps[1].max() > 0.5  # nuclei found, not an empty map
    return folder, image, maps


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "bioimageio"])
def test_exported_nuclei_he_gives_predicts_maps(he_reference, fmt):
    folder, image, expected = he_reference
    out = folder / f"he_{fmt}.{ {'torchscript': 'pt', 'onnx': 'onnx', 'bioimageio': 'zip'}[fmt] }"
    result = invoke("model", "export", "nuclei-he", "--format", fmt, "-o", out, "--sample", folder / "he.tif",
                    "--overwrite")
    assert result.exit_code == 0, result.output
    batch = image.astype(np.float32)[np.newaxis]
    if fmt == "torchscript":
        with torch.inference_mode():
            got = torch.jit.load(str(out))(torch.from_numpy(batch)).numpy()
    elif fmt == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime")
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: batch})[0]
    else:
        core = pytest.importorskip("bioimageio.core")
        summary = core.test_model(out)
        assert summary.status == "passed", summary
        sample = core.predict(model=str(out), inputs=batch)
        got = np.asarray(next(iter(sample.members.values())).data)
        from segtool.model.modelfile import load_model

        assert load_model(out).config.input == "hematoxylin"  # segtool predict -m package.zip reads it back
    assert got.shape == (1,) + expected.shape
    np.testing.assert_allclose(got[0], expected, atol=1e-3)
