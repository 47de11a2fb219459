"""Write a segtool model as a bioimage.io model package (format 0.5).

The package is a zip holding ``rdf.yaml`` and the files it names:

- ``weights.pt``: the state dict, with ``segtool_unet.py`` as its architecture
  (:mod:`segtool.interop.bioimageio_unet`, stand-alone, PyTorch only);
- ``weights_torchscript.pt``: the same network as TorchScript;
- ``test_input.npy`` / ``test_output.npy``: one image and the network's maps;
- ``cover.png``: that image beside segtool's labels for it;
- ``README.md``: the model card (data, licence, citation, scores, usage);
- ``segtool_model.json``: segtool's config and metadata, so that
  ``segtool predict -m package.zip`` rebuilds the exact model
  (:mod:`segtool.interop.package`).

The network inside outputs class probabilities (softmax) and the distance map
(sigmoid); normalisation is declared as ``scale_range`` preprocessing with the
model's own percentiles. A model with an input transform (``inverted``,
``hematoxylin``) has the transform and the normalisation after it inside the
network, which then reads the raw image (R, G, B for ``hematoxylin``) with no
preprocessing declared. segtool's instance post-processing (seeds, watershed)
has no bioimage.io equivalent: consumers get the maps, and the documentation
says how segtool turns them into labels.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from segtool.errors import InputError, ModelError

__all__ = [
    "PACKAGE_JSON",
    "PackageOptions",
    "channel_names",
    "export_bioimageio",
    "prepare_test_image",
    "scale_range",
    "validate_package",
]

#: The attachment holding segtool's own config and metadata.
PACKAGE_JSON = "segtool_model.json"
_FORMAT_VERSION = "0.5.12"
_HINT = "bioimage.io export needs the bioimageio extra: pip install 'segtool[bioimageio]'"
_CHANNELS = {
    "three_class": ["background", "interior", "boundary"],
    "distance": ["foreground", "distance"],
    "three_class_distance": ["background", "interior", "boundary", "distance"],
}
_DATA_CITATION = {
    "text": "Caicedo et al. (2019) Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
            "Nature Methods 16, 1247-1253 (image set BBBC038v1)",
    "doi": "10.1038/s41592-019-0612-7",
}
_UNET_CITATION = {
    "text": "Ronneberger, Fischer, Brox (2015) U-Net: Convolutional Networks for Biomedical Image Segmentation. MICCAI",
    "doi": "10.1007/978-3-319-24574-4_28",
}


@dataclass(frozen=True)
class PackageOptions:
    """What the package says about itself.

    Attributes
    ----------
    name : str or None
        Display name; default from the model file's name.
    description : str or None
        One sentence; default from the model's target and training data.
    authors : tuple of str
        Author names.
    license : str
        SPDX licence identifier of the weights.
    max_test_size : int
        Largest height/width of the test image (cropped from the sample).
    """

    name: str | None = None
    description: str | None = None
    authors: tuple[str, ...] = ("segtool developers",)
    license: str = "BSD-3-Clause"
    max_test_size: int = 256


def channel_names(target: str) -> list[str]:
    """Names of the output channels for a target type, in channel order.

    Examples
    --------
    >>> channel_names("three_class_distance")
    ['background', 'interior', 'boundary', 'distance']
    """
    try:
        return list(_CHANNELS[target])
    except KeyError:
        raise ModelError(f"cannot name the outputs of target {target!r}") from None


def prepare_test_image(image: np.ndarray, config, *, max_size: int = 256, keep_dtype: bool = False) -> np.ndarray:
    """Crop a (H, W) or (C, H, W) image to the network's size multiple (at most ``max_size``), as (1, C, h, w) float32.

    The crop is centred, so the part of the image with most content survives.
    For a ``hematoxylin`` model C is 3 (R, G, B; a grey image is repeated,
    an alpha channel dropped), as its exported network reads them.
    ``keep_dtype`` keeps the image's own type instead of float32.

    Raises
    ------
    InputError
        If the image is smaller than one size multiple, or has the wrong channel count.

    Examples
    --------
    >>> from segtool.model.config import UNetConfig
    >>> prepare_test_image(np.zeros((40, 70)), UNetConfig(depth=2), max_size=64).shape
    (1, 1, 40, 64)
    """
    from segtool.interop.netexport import export_input_channels

    data = np.asarray(image)
    channels = export_input_channels(config)
    if data.ndim == 2:
        data = data[np.newaxis]
    if config.input == "hematoxylin" and data.ndim == 3 and data.shape[0] in (1, 4):
        data = np.repeat(data, 3, axis=0) if data.shape[0] == 1 else data[:3]
    if data.ndim != 3 or data.shape[0] != channels:
        raise InputError(f"sample image must be (Y, X) or ({channels}, Y, X), got shape {np.shape(image)}")
    multiple = config.size_multiple
    cap = max(multiple, max_size // multiple * multiple)
    sizes = [min(cap, n // multiple * multiple) for n in data.shape[1:]]
    if min(sizes) < multiple:
        raise InputError(f"sample image must be at least {multiple} x {multiple} pixels, got {data.shape[1:]}")
    starts = [(n - s) // 2 for n, s in zip(data.shape[1:], sizes)]
    crop = data[:, starts[0]:starts[0] + sizes[0], starts[1]:starts[1] + sizes[1]]
    return np.ascontiguousarray(crop, dtype=None if keep_dtype else np.float32)[np.newaxis]


def scale_range(batch: np.ndarray, low: float, high: float, *, eps: float = 1e-6) -> np.ndarray:
    """bioimage.io's ``scale_range`` preprocessing over y and x, per sample and channel.

    segtool's own normalisation with ``eps=1e-6`` instead of 1e-20: the
    ``low`` and ``high`` percentiles of each (sample, channel) map to 0 and 1.

    Parameters
    ----------
    batch : (N, C, H, W) ndarray
    low, high : float
        Percentiles, 0-100.

    Returns
    -------
    normalized : ndarray of float32

    Examples
    --------
    >>> out = scale_range(np.arange(101.0).reshape(1, 1, 1, 101), 0, 100)
    >>> round(float(out.max()), 4)
    1.0
    """
    lo, hi = np.percentile(batch, [low, high], axis=(2, 3), keepdims=True)
    return ((batch - lo) / (hi - lo + eps)).astype(np.float32)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _cover_png(image: np.ndarray, labels: np.ndarray) -> bytes:
    """The image and segtool's outlines side by side, at least 256 px high."""
    from PIL import Image as PILImage

    from segtool.overlay import outline_overlay, to_display_uint8

    gray = to_display_uint8(image)
    left = np.repeat(gray[..., np.newaxis], 3, axis=2)
    right = outline_overlay(image, labels)
    gap = np.full((gray.shape[0], 4, 3), 255, np.uint8)
    picture = PILImage.fromarray(np.concatenate([left, gap, right], axis=1))
    if picture.height < 256:
        factor = -(-256 // picture.height)
        picture = picture.resize((picture.width * factor, picture.height * factor), PILImage.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _documentation(model, name: str, options: PackageOptions, labels_count: int, white_level: float = 255.0) -> str:
    """The package's README: the model card in Markdown."""
    config, meta = model.config, model.metadata or {}
    card = meta.get("card") or {}
    channels = channel_names(config.target)
    post = config.postprocess or {}
    if config.input == "intensity":
        input_line = (
            f"- Input `raw`: axes batch, channel, y, x; y and x any multiple of {config.size_multiple} px. "
            f"Preprocessing: `scale_range` per image and channel, percentiles {config.norm_low:g} / {config.norm_high:g} "
            "mapped to 0 / 1, not clipped (segtool normalises the same way)."
        )
    else:
        what = ("R, G, B of a brightfield/H&E image, white = " + f"{white_level:g}; the network takes the hematoxylin "
                "optical density (colour deconvolution, Ruifrok-Johnston stain vectors)"
                if config.input == "hematoxylin" else "the image as read; the network negates it")
        input_line = (
            f"- Input `raw`: axes batch, channel, y, x; y and x any multiple of {config.size_multiple} px: {what}, "
            f"then maps each image's percentiles {config.norm_low:g} / {config.norm_high:g} to 0 / 1 itself "
            f"(segtool's input transform `{config.input}` and normalisation, inside the network). No preprocessing."
        )
    lines = [
        f"# {name}",
        "",
        f"A U-Net exported by segtool (`segtool model export --format bioimageio`). Depth {config.depth}, "
        f"{config.base_channels} base channels, {config.in_channels} input channel(s); target `{config.target}`.",
        "",
        "## Inputs and outputs",
        "",
        input_line,
        f"- Output `maps`: the same size, channels {', '.join(f'{i} = {c}' for i, c in enumerate(channels))}. "
        "The class channels are softmax probabilities (they sum to 1); `distance` and `foreground` are sigmoids, "
        "in [0, 1] (distance: normalised distance to the object border, 1 at object centres).",
        "",
        "## Post-processing is not in this package",
        "",
        "segtool turns the maps into instance labels with seeds and a watershed, which the bioimage.io format "
        "cannot express. A bioimage.io consumer (bioimageio.core, ilastik, deepImageJ) gets the probability maps "
        "only. To get labels, run segtool on the package: `segtool predict -m <this package>.zip IMAGES -o out/`, "
        "which reads the model's tuned values below and gives the same labels as the original `.pt` file.",
        "",
        "Tuned post-processing values: "
        + (", ".join(f"`{k}` = {v}" for k, v in post.items()) or "segtool's defaults") + ".",
        "",
        "## Training data and licence",
        "",
        f"- Data: {card.get('dataset') or (str(meta['training_data'].get('images')) + ' images' if meta.get('training_data') else 'not recorded')}.",
        f"- Data licence: {card.get('licence') or 'not recorded'}. Weights licence: {options.license}.",
    ]
    if meta.get("command"):
        lines.append(f"- Training command: `{meta['command']}`.")
    if card.get("hardware"):
        lines.append(f"- Trained on: {card['hardware']}.")
    lines += ["", "## Scores", ""]
    val = meta.get("validation") or {}
    test = card.get("test") or {}
    if test:
        lines.append(
            f"- Test split ({test.get('images')} images, {test.get('objects')} objects), segtool's labels: "
            f"AP@0.5 {_fmt(test.get('ap_iou50'))}, AP@0.7 {_fmt(test.get('ap_iou70'))}, "
            f"F1@0.5 {_fmt(test.get('f1_iou50'))}, mean AP@0.5:0.95 {_fmt(test.get('ap_mean'))}."
        )
        if test.get("command"):
            lines.append(f"  Scored with: `{test['command']}`.")
    if val:
        lines.append(
            f"- Validation ({val.get('images')} images): F1@0.5 {_fmt(val.get('f1_iou50'))}, "
            f"AP@0.5 {_fmt(val.get('ap_iou50'))}, AP@0.5:0.95 {_fmt(val.get('ap_iou50_95'))}."
        )
    if not (test or val):
        lines.append("- No scores recorded with this model.")
    lines += [
        "",
        "## Validation",
        "",
        "The package passes `bioimageio.core`'s `test_model` (the test input through the declared preprocessing and "
        "each weight format reproduces the test output). segtool validates the description against the spec when it "
        "exports, and its test suite runs `test_model` on a package of its shipped model. "
        f"The cover shows the test image and segtool's {labels_count} objects for it.",
        "",
        "## Citation",
        "",
        f"- {_UNET_CITATION['text']}. doi:{_UNET_CITATION['doi']}",
    ]
    if "BBBC038" in str(card.get("dataset", "")) or "dsb2018" in str(card.get("dataset", "")):
        lines.append(f"- {_DATA_CITATION['text']}. doi:{_DATA_CITATION['doi']}")
    return "\n".join(lines) + "\n"


def _rdf(model, name: str, options: PackageOptions, files: dict[str, bytes], test_shape: tuple[int, ...],
         white_level: float = 255.0) -> dict:
    import torch

    from segtool.interop.netexport import transform_kwargs

    config, meta = model.config, model.metadata or {}
    card = meta.get("card") or {}
    multiple = config.size_multiple
    version = torch.__version__.split("+")[0]
    sha = {name_: _sha256(data) for name_, data in files.items()}
    input_channels = ["raw"] if config.in_channels == 1 else [f"raw{i}" for i in range(config.in_channels)]
    preprocessing = [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": float(config.norm_low),
                                                     "max_percentile": float(config.norm_high)}}]
    if config.input == "hematoxylin":
        input_channels = ["red", "green", "blue"]
    if config.input != "intensity":  # the network transforms and normalises the raw image itself
        preprocessing = []
    cite = [dict(_UNET_CITATION)]
    if "BBBC038" in str(card.get("dataset", "")) or "dsb2018" in str(card.get("dataset", "")):
        cite.append(dict(_DATA_CITATION))
    description = options.description or (
        f"segtool U-Net ({config.target}) predicting {', '.join(channel_names(config.target))} maps"
        + (f"; trained on {card['dataset']}" if card.get("dataset") else "")
    )
    return {
        "format_version": _FORMAT_VERSION,
        "type": "model",
        "name": name,
        "description": description[:1024],
        "authors": [{"name": author} for author in options.authors],
        "cite": cite,
        "license": options.license,
        "documentation": {"source": "README.md", "sha256": sha["README.md"]},
        "covers": [{"source": "cover.png", "sha256": sha["cover.png"]}],
        "tags": ["segmentation", "instance-segmentation", "unet", "2d", "pytorch", "segtool"],
        "attachments": [{"source": PACKAGE_JSON, "sha256": sha[PACKAGE_JSON]}],
        "inputs": [{
            "id": "raw",
            "description": ("image, any intensity range (normalised by the preprocessing)" if config.input == "intensity"
                            else f"raw image (input transform {config.input} and normalisation inside the network)"),
            "axes": [
                {"type": "batch"},
                {"type": "channel", "channel_names": input_channels},
                {"type": "space", "id": "y", "size": {"min": multiple, "step": multiple}},
                {"type": "space", "id": "x", "size": {"min": multiple, "step": multiple}},
            ],
            "test_tensor": {"source": "test_input.npy", "sha256": sha["test_input.npy"]},
            "data": {"type": "float32"},
            "preprocessing": preprocessing,
        }],
        "outputs": [{
            "id": "maps",
            "description": "activated network maps: softmax class probabilities, sigmoid distance/foreground",
            "axes": [
                {"type": "batch"},
                {"type": "channel", "channel_names": channel_names(config.target)},
                {"type": "space", "id": "y", "size": {"tensor_id": "raw", "axis_id": "y"}},
                {"type": "space", "id": "x", "size": {"tensor_id": "raw", "axis_id": "x"}},
            ],
            "test_tensor": {"source": "test_output.npy", "sha256": sha["test_output.npy"]},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt",
                "sha256": sha["weights.pt"],
                "architecture": {
                    "source": "segtool_unet.py",
                    "sha256": sha["segtool_unet.py"],
                    "callable": "SegtoolUNet",
                    "kwargs": {"in_channels": config.in_channels, "depth": config.depth,
                               "base_channels": config.base_channels, "target": config.target,
                               **transform_kwargs(config, white_level=white_level)},
                },
                "pytorch_version": version,
            },
            "torchscript": {
                "source": "weights_torchscript.pt",
                "sha256": sha["weights_torchscript.pt"],
                "pytorch_version": version,
                "parent": "pytorch_state_dict",
            },
        },
        "config": {"segtool": {"model_file": PACKAGE_JSON, "target": config.target,
                               "postprocess": dict(config.postprocess or {}),
                               "input_transform": config.input,
                               **({"white_level": white_level} if config.input == "hematoxylin" else {}),
                               "test_shape": list(test_shape)}},
    }


def _require_bioimageio():
    try:
        import bioimageio.spec  # noqa: F401
        import ruyaml  # noqa: F401
    except ImportError:
        raise ModelError(_HINT) from None


def build_package_files(model, sample: np.ndarray, *, options: PackageOptions = PackageOptions(),
                        source_name: str = "model") -> dict[str, bytes]:
    """Every file of the package, by name, in memory (``rdf.yaml`` included).

    Parameters
    ----------
    model : LoadedModel
        The model to package (its plain network, as :func:`load_model` gives it).
    sample : (H, W) or (C, H, W) ndarray
        A raw image; a centred crop becomes the test tensor and the cover.
    options : PackageOptions, optional
    source_name : str, optional
        The model file's stem, for the default name.

    Returns
    -------
    files : dict of str to bytes
    """
    import ruyaml
    import torch

    from segtool.interop.netexport import build_export_net, export_white_level, reference_output, torchscript_bytes
    from segtool.infer.predict import predict_image

    config = model.config
    white = export_white_level(sample) if config.input == "hematoxylin" else 255.0
    raw_crop = prepare_test_image(sample, config, max_size=options.max_test_size, keep_dtype=True)[0]
    test_input = raw_crop[np.newaxis].astype(np.float32)
    net = build_export_net(model, white_level=white)
    # with an input transform the network normalises the raw image itself
    net_input = test_input if config.input != "intensity" else scale_range(test_input, config.norm_low, config.norm_high)
    test_output = reference_output(net, net_input)
    labels = predict_image(raw_crop, model).labels
    state = io.BytesIO()
    torch.save(net.state_dict(), state)
    model_json = {"format": "segtool-unet-bioimageio", "format_version": 1, "config": config.to_dict(),
                  "metadata": model.metadata or {}}
    name = options.name or f"segtool U-Net {source_name}"
    files = {
        "weights.pt": state.getvalue(),
        "segtool_unet.py": resources.files("segtool.interop").joinpath("bioimageio_unet.py").read_bytes(),
        "weights_torchscript.pt": torchscript_bytes(model, white_level=white),
        "test_input.npy": _npy_bytes(test_input),
        "test_output.npy": _npy_bytes(test_output),
        "cover.png": _cover_png(test_input[0].mean(axis=0), labels),
        "README.md": _documentation(model, name, options, int(labels.max()), white).encode(),
        PACKAGE_JSON: json.dumps(model_json, indent=1, allow_nan=False).encode(),
    }
    rdf = _rdf(model, name, options, files, tuple(test_input.shape), white)
    text = io.StringIO()
    yaml = ruyaml.YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # keep the spec's reading order (format, name, ..., weights)
    yaml.dump(rdf, text)
    files["rdf.yaml"] = text.getvalue().encode()
    return files


def validate_package(path: str | os.PathLike) -> None:
    """Check a package against the bioimage.io spec (static checks; no network run).

    Raises
    ------
    ModelError
        Naming the first problem, or the missing extra.
    """
    _require_bioimageio()
    from bioimageio.spec import InvalidDescr, load_description

    descr = load_description(str(path), perform_io_checks=True)
    if isinstance(descr, InvalidDescr):
        errors = descr.validation_summary.details
        problems = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in errors for e in d.errors][:3]
        raise ModelError(f"the package does not pass bioimage.io validation: {'; '.join(problems) or 'invalid'}")


def export_bioimageio(model, path: str | os.PathLike, sample: np.ndarray, *,
                      options: PackageOptions = PackageOptions(), overwrite: bool = False,
                      source_name: str = "model") -> Path:
    """Write ``model`` as a bioimage.io model package (zip), validated before it is put in place.

    Parameters
    ----------
    model : LoadedModel
    path : path-like
        Destination ``.zip``.
    sample : (H, W) or (C, H, W) ndarray
        Raw image for the test tensors and the cover.
    options : PackageOptions, optional
    overwrite : bool, optional
    source_name : str, optional
        For the default package name.

    Returns
    -------
    path : Path
        The package written.

    Raises
    ------
    ModelError
        If the bioimageio extra is missing, or the package fails validation.
    OutputError
        If ``path`` exists and not ``overwrite``.
    InputError
        If ``sample`` does not fit the model.
    """
    from segtool.io import atomic_output, check_output_free

    _require_bioimageio()
    path = Path(path)
    check_output_free(path, overwrite=overwrite)
    files = build_package_files(model, sample, options=options, source_name=source_name)
    with tempfile.TemporaryDirectory(prefix="segtool-bioimageio-") as folder:
        candidate = Path(folder) / "package.zip"
        with zipfile.ZipFile(candidate, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("rdf.yaml", files["rdf.yaml"])
            for name, data in files.items():
                if name != "rdf.yaml":
                    archive.writestr(name, data)
        validate_package(candidate)
        with atomic_output(path, overwrite=overwrite) as tmp:
            tmp.write_bytes(candidate.read_bytes())
    return path
