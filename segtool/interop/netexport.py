"""TorchScript and ONNX exports of a segtool U-Net, checked against PyTorch.

The exported network is :class:`~segtool.interop.bioimageio_unet.SegtoolUNet`
holding the model's weights: normalised image in, activated maps out (class
probabilities by softmax, distance by sigmoid). Batch size, height and width
stay dynamic; height and width must be multiples of ``2**depth``. Intensity
normalisation and instance post-processing stay outside the exported net.
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
    "check_onnx",
    "check_torchscript",
    "example_input",
    "export_checked",
    "export_onnx",
    "export_torchscript",
    "reference_output",
    "torchscript_bytes",
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


def build_export_net(model):
    """The exportable network of a loaded model: stand-alone U-Net + output activation, eval mode, CPU, float32.

    Parameters
    ----------
    model : LoadedModel
        From :func:`segtool.unet.modelfile.load_model`.

    Returns
    -------
    net : SegtoolUNet
        A new module; ``model`` is not changed.
    """
    import torch

    from segtool.interop.bioimageio_unet import SegtoolUNet

    if model.config.input != "intensity":  # exported networks start at the normalised image, after the transform
        name = model.path.name if getattr(model, "path", None) else "model"
        raise ModelError(f"{name}: cannot export a model with input transform {model.config.input!r}; "
                         "exported networks expect intensity input")

    config = model.config
    net = SegtoolUNet(in_channels=config.in_channels, depth=config.depth, base_channels=config.base_channels,
                      target=config.target)
    state = {k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
             for k, v in model.net.state_dict().items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:  # a network prepared for inference (BatchNorm folded) has other parameters
        raise ModelError(f"cannot export this network's weights: {str(err).splitlines()[0][:200]}") from None
    return net.eval()


def example_input(config, *, batch: int = 1, height: int | None = None, width: int | None = None,
                  seed: int = 0) -> np.ndarray:
    """A random normalised input of a size the network accepts.

    Examples
    --------
    >>> from segtool.unet.config import UNetConfig
    >>> example_input(UNetConfig(depth=2), height=8, width=12).shape
    (1, 1, 8, 12)
    """
    multiple = config.size_multiple
    height = height or 2 * multiple
    width = width or 3 * multiple
    return np.random.default_rng(seed).random((batch, config.in_channels, height, width), dtype=np.float32)


def reference_output(net, batch: np.ndarray) -> np.ndarray:
    """Run the PyTorch network on a (N, C, H, W) float32 batch and return the maps as NumPy."""
    import torch

    with torch.inference_mode():
        return net(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()


def _other_shapes(shape: tuple[int, ...], multiple: int) -> list[tuple[int, ...]]:
    """Input shapes that differ from ``shape`` in batch size and both spatial sizes."""
    n, c, h, w = shape
    return [(n + 1, c, h + multiple, max(multiple, w - multiple) if w > multiple else w + 2 * multiple)]


def _script(net):
    import torch

    scripted = torch.jit.script(net)
    # freezing folds BatchNorm into the convolutions and inlines the weights: faster, same maps to ~1e-6
    return torch.jit.freeze(scripted)


def export_torchscript(model, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
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
    scripted = _script(build_export_net(model))
    with atomic_output(path, overwrite=overwrite) as tmp:
        torch.jit.save(scripted, str(tmp))
    return path


def torchscript_bytes(model) -> bytes:
    """The TorchScript file of :func:`export_torchscript` as bytes (for packages)."""
    import torch

    buffer = io.BytesIO()
    torch.jit.save(_script(build_export_net(model)), buffer)
    return buffer.getvalue()


def check_torchscript(path: str | os.PathLike, model, batch: np.ndarray) -> ExportCheck:
    """Load a TorchScript export and compare it with PyTorch on ``batch`` and on another size.

    Returns
    -------
    ExportCheck
        ``max_abs_diff`` is the largest difference over all the inputs run.
    """
    import torch

    net = build_export_net(model)
    loaded = torch.jit.load(str(path), map_location="cpu")
    shapes = [tuple(batch.shape)] + _other_shapes(tuple(batch.shape), model.config.size_multiple)
    worst = 0.0
    for index, shape in enumerate(shapes):
        data = batch if index == 0 else np.random.default_rng(index).random(shape, dtype=np.float32)
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


def export_onnx(model, path: str | os.PathLike, *, overwrite: bool = False, opset: int = 18) -> Path:
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
    net = build_export_net(model)
    multiple = model.config.size_multiple
    sample = torch.from_numpy(example_input(model.config, batch=2, height=2 * multiple, width=3 * multiple))
    dims = torch.export.Dim
    dynamic = {"x": {0: dims("batch", min=1, max=1024), 2: multiple * dims("height_blocks", min=1, max=4096),
                     3: multiple * dims("width_blocks", min=1, max=4096)}}
    with atomic_output(path, overwrite=overwrite) as tmp, warnings.catch_warnings(), _quiet_logger("torch.onnx"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (sample,), dynamo=True, dynamic_shapes=dynamic, opset_version=opset,
                                    input_names=["image"], output_names=["maps"], verbose=False)
        program.save(str(tmp))
    return path


def check_onnx(path: str | os.PathLike, model, batch: np.ndarray) -> ExportCheck:
    """Run an ONNX export under onnxruntime and compare it with PyTorch on ``batch`` and on another size.

    Raises
    ------
    ModelError
        If the ``onnx`` extra is not installed.
    """
    _require_onnx()
    import onnxruntime

    net = build_export_net(model)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    shapes = [tuple(batch.shape)] + _other_shapes(tuple(batch.shape), model.config.size_multiple)
    worst = 0.0
    for index, shape in enumerate(shapes):
        data = batch if index == 0 else np.random.default_rng(index).random(shape, dtype=np.float32)
        got = session.run(None, {name: np.ascontiguousarray(data, dtype=np.float32)})[0]
        worst = max(worst, float(np.abs(got - reference_output(net, data)).max()))
    return ExportCheck(path=Path(path), max_abs_diff=worst, shapes=tuple(shapes))


def export_checked(model, path: str | os.PathLike, fmt: str, batch: np.ndarray, *,
                   overwrite: bool = False) -> ExportCheck:
    """Export to TorchScript or ONNX, check against PyTorch, and only then put the file in place.

    Parameters
    ----------
    model : LoadedModel
    path : path-like
        Destination.
    fmt : {"torchscript", "onnx"}
    batch : (N, C, H, W) ndarray of float32
        Normalised test input (H, W multiples of ``2**depth``).
    overwrite : bool, optional

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
        export(model, candidate)
        result = check(candidate, model, batch)
        if not result.max_abs_diff <= EXPORT_TOLERANCE:
            raise ModelError(
                f"{fmt} export differs from PyTorch by {result.max_abs_diff:.2e} (> {EXPORT_TOLERANCE:g}); not written"
            )
        with atomic_output(path, overwrite=overwrite) as tmp:
            tmp.write_bytes(candidate.read_bytes())
    return ExportCheck(path=path, max_abs_diff=result.max_abs_diff, shapes=result.shapes)
