"""Read a model file's config and metadata, without torch where the file allows.

``segtool model list`` and ``model info`` show what a model file says about
itself; importing torch for that costs about a second. A file written by
``torch.save`` is a zip archive whose ``data.pkl`` holds the dict and
references the tensors' bytes stored beside it, so the dict can be read with
the standard library: :func:`read_model_header` unpickles it with an
unpickler that knows five names (the tensor and storage types torch writes)
and refuses every other, so reading a file cannot run code, as with
``torch.load(weights_only=True)``. Tensors come back as :class:`TensorInfo`
(shape only). Anything it does not understand (an older layout, a damaged
file) is read by torch instead (:func:`read_payload`), whose errors the user
then sees.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from segtool.errors import ModelError, first_line
from segtool.model.config import UNetConfig

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "TensorInfo",
    "is_shipped",
    "parse_payload",
    "read_model_header",
    "read_model_info",
    "read_payload",
    "torch_load",
]

FORMAT = "segtool-unet"
FORMAT_VERSION = 1

#: Buffers that are state, not learnt parameters (left out of the parameter count).
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class TensorInfo:
    """What :func:`read_model_header` keeps of a tensor: its shape.

    Examples
    --------
    >>> TensorInfo((16, 1, 3, 3)).numel()
    144
    """

    shape: tuple[int, ...]

    def numel(self) -> int:
        """Number of elements."""
        return int(prod(self.shape))


class _Storage:
    """Stands for a torch storage type named in the pickle (its bytes are never read)."""


def _rebuild_tensor(storage, offset, size, stride, *rest) -> TensorInfo:
    return TensorInfo(tuple(int(n) for n in size))


class _HeaderUnpickler(pickle.Unpickler):
    # The only globals a state dict of plain tensors needs; anything else is refused, never imported.
    _ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor, ("collections", "OrderedDict"): OrderedDict}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name.endswith("Storage") and name.isidentifier():
            return _Storage
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a model file")

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and pid and pid[0] == "storage":
            return None
        raise pickle.UnpicklingError("unexpected persistent id")


def read_model_header(path: str | Path) -> dict[str, Any] | None:
    """The dict ``torch.save`` wrote to ``path``, with tensors as :class:`TensorInfo`.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    payload : dict or None
        None where the file is not a zip written by ``torch.save`` holding
        plain tensors only (read it with :func:`torch_load` to learn why).

    Examples
    --------
    >>> import io, pickle, zipfile
    >>> buffer = io.BytesIO()
    >>> with zipfile.ZipFile(buffer, "w") as archive:
    ...     archive.writestr("m/data.pkl", pickle.dumps({"format": "x"}))
    >>> read_model_header(buffer)
    {'format': 'x'}
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(names) != 1:
                return None
            with archive.open(names[0]) as stream:
                payload = _HeaderUnpickler(stream).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError,
            AttributeError, IndexError, KeyError):
        return None
    return payload if isinstance(payload, dict) else None


def torch_load(path: Path, what: str, *, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` on ``path``, its failures as one-line :class:`ModelError`.

    ``mmap``: tensors map the file and are read only when touched.
    """
    if not path.exists():
        raise ModelError(f"{what} not found: {path}")
    if path.is_dir():
        raise ModelError(f"expected a {what}, got a folder: {path}")
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001  truncated zip, foreign pickle, unreadable file: all mean "not a model"
        reason = first_line(err)
        if reason.startswith("Weights only load failed"):
            # torch's advice here (reload with weights_only=False) would run code from the file: don't relay it.
            reason = "not a PyTorch file, or one holding more than plain weights"
        raise ModelError(f"not a readable segtool {what} (torch.load failed: {reason[:200]})") from None


def read_payload(path: Path, *, weights: bool = True) -> dict[str, Any]:
    """A model file's (or bioimage.io package's) dict, checked.

    ``weights=False`` reads a model shipped in the package without torch:
    its tensors are then :class:`TensorInfo` (our own files; any other file
    is read, bounded, with torch and its weights checked, see
    :mod:`segtool.model.modelcheck`).

    Raises
    ------
    ModelError
        If the file is missing, unreadable, not a segtool model, or from a
        newer format version.
    """
    from segtool.interop.package import is_bioimageio_package, read_package

    if path.exists() and not path.is_dir() and not path.is_file():
        raise ModelError(f"expected a model file, got a device, pipe or socket: {path}")
    if is_bioimageio_package(path):
        # a package from `segtool model export --format bioimageio`: the same config, metadata and weights
        config, metadata, state = read_package(path)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": json.dumps(config),
                "metadata": json.dumps(metadata), "state_dict": state}
    payload = None if weights or not path.is_file() or not is_shipped(path) else read_model_header(path)
    if payload is None:
        if path.is_file():
            from segtool.model.modelcheck import check_torch_archive

            check_torch_archive(path, "model file")  # before torch.load reads anything it declares
        # mapped, not read: weights that do not fit the config are refused before any of them is in memory
        payload = torch_load(path, "model file", mmap=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(
            "not a segtool model file (no 'format': 'segtool-unet' entry); "
            "train one with `segtool train` or pass a file it wrote"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ModelError(
            f"model file format version {version!r} is not supported by this segtool "
            f"(supports 1..{FORMAT_VERSION}); upgrade segtool"
        )
    for key in ("config", "metadata"):
        if not isinstance(payload.get(key), str):
            raise ModelError(f"model file is damaged: '{key}' is missing or not JSON text")
    if not isinstance(payload.get("state_dict"), dict):
        raise ModelError("model file is damaged: 'state_dict' is missing")
    return payload


def parse_payload(payload: dict[str, Any]) -> tuple[UNetConfig, dict[str, Any]]:
    """The config and metadata of a payload from :func:`read_payload`, its weights checked against the config.

    Nothing is built: the weights' names, shapes, kinds and values are
    checked against the shapes the config implies
    (:func:`segtool.model.modelcheck.check_state_dict`); a shipped model's
    header (tensors as :class:`TensorInfo`) is not.

    Raises
    ------
    ModelError
        If either is not valid JSON of the expected shape, or the weights are
        not exactly those the config implies, or not finite.
    """
    try:
        config = UNetConfig.from_dict(json.loads(payload["config"]))
    except (ValueError, TypeError, RecursionError) as err:  # JSON errors and InputError are ValueErrors
        raise ModelError(f"model file has an invalid config: {first_line(err)[:200]}") from None
    try:
        metadata = json.loads(payload["metadata"])
    except (ValueError, RecursionError) as err:
        raise ModelError(f"model file has invalid metadata: {first_line(err)[:200]}") from None
    if not isinstance(metadata, dict):
        raise ModelError("model file has invalid metadata: not a JSON object")
    state = payload["state_dict"]
    if not any(isinstance(t, TensorInfo) for t in state.values()):
        from segtool.model.modelcheck import check_state_dict

        check_state_dict(config, state)
    return config, metadata


def is_shipped(path: Path) -> bool:
    """Whether ``path`` is one of the model files shipped inside this segtool (``segtool/models/``)."""
    try:
        return Path(path).resolve().parent == (Path(__file__).resolve().parents[1] / "models")
    except OSError:
        return False


def read_model_info(path: str | Path) -> dict[str, Any]:
    """Return the config and metadata of a model file without building the net.

    Returns
    -------
    info : dict
        ``{"path", "format", "format_version", "config", "metadata",
        "parameters", "file_bytes"}``, JSON-safe.

    Raises
    ------
    ModelError
        As :func:`segtool.model.modelfile.load_model`.
    """
    path = Path(path)
    payload = read_payload(path, weights=False)
    config, metadata = parse_payload(payload)
    parameters = sum(
        int(t.numel())
        for name, t in payload["state_dict"].items()
        if hasattr(t, "numel") and hasattr(t, "shape") and not name.endswith(_BUFFERS)
    )
    return {
        "path": str(path),
        "format": payload["format"],
        "format_version": payload["format_version"],
        "config": config.to_dict(),
        "metadata": metadata,
        "parameters": parameters,
        "file_bytes": path.stat().st_size,
    }
