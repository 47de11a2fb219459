"""TorchScript and ONNX exports of a segtool U-Net, checked against PyTorch.

The exported network is :class:`~segtool.interop.bioimageio_unet.SegtoolUNet`
holding the model's weights: normalised image in, activated maps out (class
probabilities by softmax, distance by sigmoid). Batch size, height and width
stay dynamic; height and width must be multiples of ``2**depth``. Intensity
normalisation and instance post-processing stay outside the exported net,
except for a model with an input transform (``inverted``, ``hematoxylin``):
there the transform and the percentile normalisation after it are inside, and
the net reads the raw image (:func:`export_input_channels` channels; for
``hematoxylin`` R, G, B with a fixed white level, :func:`export_white_level`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segtool.errors import ModelError

__all__ = [
    "EXPORT_TOLERANCE",
    "ExportCheck",
    "build_export_net",
    "export_input_channels",
    "export_white_level",
    "check_onnx",
    "check_torchscript",
    "example_input",
    "export_checked",
    "export_onnx",
    "export_torchscript",
    "reference_output",
    "torchscript_bytes",
    "transform_kwargs",
]

#: Largest max-abs difference accepted between an export and PyTorch on the test tensor.
EXPORT_TOLERANCE = 1e-4

_ONNX_HINT = "ONNX export needs the onnx extra: pip install 'segtool[onnx]'"


@dataclass(frozen=True)
class ExportCheck:
    """Outcome of running an exported file next to PyTorch on one input.

    Attributes
    ----------
    path : Path
        The exported file.
    max_abs_diff : float
        Largest absolute difference between the export's output and PyTorch's.
    shapes : tuple of tuple of int
        Input shapes the export was run on (the test tensor, then other
        batch/spatial sizes, proving the sizes are dynamic).
    """

    path: Path
    max_abs_diff: float
    shapes: tuple[tuple[int, ...], ...]


def export_input_channels(config) -> int:
    """Channels of the exported network's input: 3 (R, G, B) for ``hematoxylin``, else the model's own.

    Examples
    --------
    >>> from segtool.model.config import UNetConfig
    >>> export_input_channels(UNetConfig(input="hematoxylin")), export_input_channels(UNetConfig())
    (3, 1)
    """
    return 3 if config.input == "hematoxylin" else config.in_channels


def export_white_level(sample: np.ndarray) -> float:
    """The fixed white level an exported ``hematoxylin`` network uses, from the sample image's type.

    segtool takes an integer image's type maximum as white (255 for 8 bits),
    and for floats 1, or each image's own maximum when that is above 1. An
    exported network has one fixed value, so a float sample above 1 cannot be
    expressed.

    Raises
    ------
    ModelError
        For a floating-point sample with values above 1.

    Examples
    --------
    >>> export_white_level(np.zeros((3, 4, 4), np.uint8)), export_white_level(np.ones((3, 4, 4), np.float32))
    (255.0, 1.0)
    """
    data = np.asarray(sample)
    if data.dtype == bool:
        return 1.0
    if np.issubdtype(data.dtype, np.integer):
        return float(np.iinfo(data.dtype).max)
    if data.size and float(np.nanmax(data)) > 1.0:
        raise ModelError(
            "cannot export the hematoxylin transform for a floating-point RGB sample with values above 1: segtool "
            "takes each such image's maximum as its white level, which a fixed network cannot; give an 8- or 16-bit "
            "--sample (white 255 or 65535) or one scaled to [0, 1]"
        )
    return 1.0


def build_export_net(model, *, white_level: float = 255.0):
    """The exportable network of a loaded model: stand-alone U-Net + output activation, eval mode, CPU, float32.

    Parameters
    ----------
    model : LoadedModel
        From :func:`segtool.model.modelfile.load_model`.
    white_level : float, optional
        ``hematoxylin`` models: the raw value of white (see :func:`export_white_level`).

    Returns
    -------
    net : SegtoolUNet
        A new module; ``model`` is not changed. With an input transform it
        reads the raw image and normalises it itself.
    """
    import torch

    from segtool.interop.bioimageio_unet import SegtoolUNet
    config = model.config
    net = SegtoolUNet(in_channels=config.in_channels, depth=config.depth, base_channels=config.base_channels,
                      target=config.target, **transform_kwargs(config, white_level=white_level))
    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
             for k, v in model.net.state_dict().items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:  # a network prepared for inference (BatchNorm folded) has other parameters
        raise ModelError(f"cannot export this network's weights: {str(err).splitlines()[0][:200]}") from None
    return net.eval()


def transform_kwargs(config, *, white_level: float = 255.0) -> dict:
    """The :class:`SegtoolUNet` arguments that put a model's input transform inside it (none for ``intensity``).

    Examples
    --------
    >>> from segtool.model.config import UNetConfig
    >>> transform_kwargs(UNetConfig()), sorted(transform_kwargs(UNetConfig(input="inverted")))
    ({}, ['input_transform', 'norm_high', 'norm_low'])
    """
    from segtool.intake import STAIN_RGB

    if config.input == "intensity":
        return {}
    kwargs = {"input_transform": config.input, "norm_low": float(config.norm_low), "norm_high": float(config.norm_high)}
    if config.input == "hematoxylin":
        kwargs.update(white_level=float(white_level),
                      hematoxylin_weights=[float(w) for w in np.linalg.inv(STAIN_RGB)[:, 0]])
    return kwargs


def example_input(config, *, batch: int = 1, height: int | None = None, width: int | None = None,
                  seed: int = 0, white_level: float = 255.0) -> np.ndarray:
    """A random input of a size the network accepts: normalised, or raw in [0, white) with an input transform.

    Examples
    --------
    >>> from segtool.model.config import UNetConfig
    >>> example_input(UNetConfig(depth=2), height=8, width=12).shape
    (1, 1, 8, 12)
    """
    multiple = config.size_multiple
    height = height or 2 * multiple
    width = width or 3 * multiple
    shape = (batch, export_input_channels(config), height, width)
    data = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return data * np.float32(white_level) if config.input == "hematoxylin" else data


def reference_output(net, batch: np.ndarray) -> np.ndarray:
    """Run the PyTorch network on a (N, C, H, W) float32 batch and return the maps as NumPy."""
    import torch

    with torch.inference_mode():
        return net(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()


def _other_shapes(shape: tuple[int, ...], multiple: int) -> list[tuple[int, ...]]:
    """Input shapes that differ from ``shape`` in batch size and both spatial sizes."""
    n, c, h, w = shape
    return [(n + 1, c, h + multiple, max(multiple, w - multiple) if w > multiple else w + 2 * multiple)]


def _random_input(shape: tuple[int, ...], seed: int, config, white_level: float) -> np.ndarray:
    """Random input of ``shape`` in the range the exported network reads (raw RGB up to white, else [0, 1))."""
    data = np.random.default_rng(seed).random(shape, dtype=np.float32)
    return data * np.float32(white_level) if config.input == "hematoxylin" else data


def _script(net):
    import torch

    scripted = torch.jit.script(net)
    # freezing folds BatchNorm into the convolutions and inlines the weights: faster, same maps to ~1e-6
    return torch.jit.freeze(scripted)


def export_torchscript(model, path: str | os.PathLike, *, overwrite: bool = False, white_level: float = 255.0) -> Path:
    """Write the model as a TorchScript file (for QuPath, deepImageJ/JDLL, ``torch.jit.load``).

    Returns
    -------
    path : Path
        The TorchScript file written.

    Raises
    ------
    OutputError
        If ``path`` exists and not ``overwrite``, or cannot be written.
    """
    import torch

    from segtool.io import atomic_output

    path = Path(path)
    scripted = _script(build_export_net(model, white_level=white_level))
    with atomic_output(path, overwrite=overwrite) as tmp:
        torch.jit.save(scripted, str(tmp))
    return path


def torchscript_bytes(model, *, white_level: float = 255.0) -> bytes:
    """The TorchScript file of :func:`export_torchscript` as bytes (for packages)."""
    import torch

    buffer = io.BytesIO()
    torch.jit.save(_script(build_export_net(model, white_level=white_level)), buffer)
    return buffer.getvalue()


def check_torchscript(path: str | os.PathLike, model, batch: np.ndarray, *, white_level: float = 255.0) -> ExportCheck:
    """Load a TorchScript export and compare it with PyTorch on ``batch`` and on another size.

    Returns
    -------
    ExportCheck
        ``max_abs_diff`` is the largest difference over all the inputs run.
    """
    import torch

    net = build_export_net(model, white_level=white_level)
    loaded = torch.jit.load(str(path), map_location="cpu")
    shapes = [tuple(batch.shape)] + _other_shapes(tuple(batch.shape), model.config.size_multiple)
    worst = 0.0
    for index, shape in enumerate(shapes):
        data = batch if index == 0 else _random_input(shape, index, model.config, white_level)
        with torch.inference_mode():
            got = loaded(torch.from_numpy(np.ascontiguousarray(data))).numpy()
        worst = max(worst, float(np.abs(got - reference_output(net, data)).max()))
    return ExportCheck(path=Path(path), max_abs_diff=worst, shapes=tuple(shapes))


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Silence a library's logger (torch.onnx lists skipped torchvision ops) for one call, then restore it."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ModelError(_ONNX_HINT) from None


def export_onnx(model, path: str | os.PathLike, *, overwrite: bool = False, opset: int = 18,
                white_level: float = 255.0) -> Path:
    """Write the model as an ONNX file with dynamic batch, height and width.

    Height and width are declared as multiples of ``2**depth``.

    Returns
    -------
    path : Path
        The ONNX file written.

    Raises
    ------
    ModelError
        If the ``onnx`` extra is not installed (a one-line install hint).
    OutputError
        If ``path`` exists and not ``overwrite``, or cannot be written.
    """
    import torch

    from segtool.io import atomic_output

    _require_onnx()
    path = Path(path)
    net = build_export_net(model, white_level=white_level)
    multiple = model.config.size_multiple
    sample = torch.from_numpy(example_input(model.config, batch=2, height=2 * multiple, width=3 * multiple,
                                            white_level=white_level))
    dims = torch.export.Dim
    dynamic = {"x": {0: dims("batch", min=1, max=1024), 2: multiple * dims("height_blocks", min=1, max=4096),
                     3: multiple * dims("width_blocks", min=1, max=4096)}}
    with atomic_output(path, overwrite=overwrite) as tmp, warnings.catch_warnings(), _quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (sample,), dynamo=True, dynamic_shapes=dynamic, opset_version=opset,
                                    input_names=["image"], output_names=["maps"], verbose=False)
        program.save(str(tmp))
    return path


def check_onnx(path: str | os.PathLike, model, batch: np.ndarray, *, white_level: float = 255.0) -> ExportCheck:
    """Run an ONNX export under onnxruntime and compare it with PyTorch on ``batch`` and on another size.

    Raises
    ------
    ModelError
        If the ``onnx`` extra is not installed.
    """
    _require_onnx()
    import onnxruntime

    net = build_export_net(model, white_level=white_level)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shapes = [tuple(batch.shape)] + _other_shapes(tuple(batch.shape), model.config.size_multiple)
    worst = 0.0
    for index, shape in enumerate(shapes):
        data = batch if index == 0 else _random_input(shape, index, model.config, white_level)
        got = session.run(None, {name: np.ascontiguousarray(data, dtype=np.float32)})[0]
        worst = max(worst, float(np.abs(got - reference_output(net, data)).max()))
    return ExportCheck(path=Path(path), max_abs_diff=worst, shapes=tuple(shapes))


def export_checked(model, path: str | os.PathLike, fmt: str, batch: np.ndarray, *,
                   overwrite: bool = False, white_level: float = 255.0) -> ExportCheck:
    """Export to TorchScript or ONNX, check against PyTorch, and only then put the file in place.

    Parameters
    ----------
    model : LoadedModel
    path : path-like
        Destination.
    fmt : {"torchscript", "onnx"}
    batch : (N, C, H, W) ndarray of float32
        Test input (H, W multiples of ``2**depth``): normalised, or raw for a
        model with an input transform.
    overwrite : bool, optional
    white_level : float, optional
        ``hematoxylin`` models: the raw value of white.

    Returns
    -------
    ExportCheck
        With ``path`` the destination.

    Raises
    ------
    ModelError
        If the export differs from PyTorch by more than :data:`EXPORT_TOLERANCE`
        (nothing is written), or an extra is missing.
    OutputError
        If ``path`` exists and not ``overwrite``.
    """
    import tempfile

    from segtool.io import atomic_output, check_output_free

    exporters = {"torchscript": (export_torchscript, check_torchscript), "onnx": (export_onnx, check_onnx)}
    if fmt not in exporters:
        raise ModelError(f"unknown export format {fmt!r}; choose {', '.join(exporters)}")
    export, check = exporters[fmt]
    path = Path(path)
    check_output_free(path, overwrite=overwrite)
    with tempfile.TemporaryDirectory(prefix="segtool-export-") as folder:
        candidate = Path(folder) / path.name
        export(model, candidate, white_level=white_level)
        result = check(candidate, model, batch, white_level=white_level)
        if not result.max_abs_diff <= EXPORT_TOLERANCE:
            raise ModelError(
                f"{fmt} export differs from PyTorch by {result.max_abs_diff:.2e} (> {EXPORT_TOLERANCE:g}); not written"
            )
        with atomic_output(path, overwrite=overwrite) as tmp:
            tmp.write_bytes(candidate.read_bytes())
    return ExportCheck(path=path, max_abs_diff=result.max_abs_diff, shapes=result.shapes)
