"""Save and load a U-Net as one self-describing file.

A model file is what ``torch.save`` writes for this dict (a bioimage.io
package written by ``segtool model export`` loads the same way, see
:mod:`segtool.interop.package`)::

    {"format": "segtool-unet", "format_version": 1,
     "config": "<UNetConfig as JSON>", "metadata": "<training summary as JSON>",
     "state_dict": {name: tensor, ...}}

It is read back with ``torch.load(weights_only=True)``, which refuses to
unpickle arbitrary objects, so a model file from a stranger cannot run code;
before that its zip layout is checked, and after it its weights are checked
against its config, before any network is built (:mod:`segtool.model.modelcheck`).
The config and metadata are JSON text, readable with any tool.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segtool.errors import InputError, ModelError, SegtoolError, first_line
from segtool.model.config import UNetConfig
from segtool.model.model import UNet, resolve_device
# Reading a file's dict lives in modelinfo (torch-free for the shipped models' `model list`/`info`).
from segtool.model.modelinfo import FORMAT, FORMAT_VERSION, parse_payload, read_payload, torch_load

__all__ = [
    "CHECKPOINT_FORMAT",
    "LoadedModel",
    "check_model_file",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "save_model",
]

CHECKPOINT_FORMAT = "segtool-unet-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class LoadedModel:
    """A network ready for inference, with its config and training metadata.

    Attributes
    ----------
    net : UNet
        In eval mode, on the requested device.
    config : UNetConfig
    metadata : dict
        Training summary (segtool version, epochs, data counts and hash,
        validation metrics, command line).
    path : Path or None
        The file it was loaded from.
    """

    net: UNet
    config: UNetConfig
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _json_dumps(data: dict[str, Any], what: str) -> str:
    try:
        return json.dumps(data, indent=2, sort_keys=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} is not JSON-serialisable: {err}") from None


def _clean_json(value: Any) -> Any:
    """Replace NaN/inf by None so the metadata stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_json(v) for v in value]
    return value


def save_model(
    path: str | Path,
    net: nn.Module,
    config: UNetConfig,
    *,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write weights, config and metadata to one model file, atomically.

    Parameters
    ----------
    path : str or Path
        Destination, conventionally ``*.pt``.
    net : nn.Module
        A :class:`~segtool.model.model.UNet` built from ``config``.
    config : UNetConfig
    metadata : dict, optional
        JSON-safe training summary; NaN and infinities become ``null``.
    overwrite : bool, optional
        Replace an existing file.

    Returns
    -------
    path : Path
        The model file written.

    Raises
    ------
    OutputError
        If ``path`` exists and not ``overwrite``, or cannot be written.
    InputError
        If ``metadata`` is not JSON-serialisable.
    """
    from segtool.io import atomic_output

    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": _json_dumps(config.to_dict(), "config"),
        "metadata": _json_dumps(_clean_json(dict(metadata or {})), "metadata"),
        # plain layout: a network trained channels-last stores the same bytes as any other
        "state_dict": {
            name: t.detach().cpu().clone(memory_format=torch.contiguous_format) for name, t in net.state_dict().items()
        },
    }
    with atomic_output(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return path


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model file written by :func:`save_model`.

    Parameters
    ----------
    path : str or Path
    device : str or torch.device, optional
        ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.

    Returns
    -------
    model : LoadedModel
        ``model.net`` is in eval mode on ``device``.

    Raises
    ------
    ModelError
        If the file is missing, truncated, forged, not a segtool model, from a
        newer format version, or its weights are not exactly those its config
        implies, or not finite (checked before the network is built, see
        :mod:`segtool.model.modelcheck`).
    """
    path = Path(path)
    payload = read_payload(path)
    config, metadata = parse_payload(payload)
    net = UNet(config)
    try:
        net.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError, TypeError) as err:
        first = first_line(err)
        raise ModelError(f"model file weights do not match its config: {first[:200]}") from None
    if not isinstance(device, torch.device):
        try:
            device = resolve_device(device)
        except SegtoolError as err:
            raise ModelError(str(err)) from None
    net.to(device).eval()
    return LoadedModel(net=net, config=config, metadata=metadata, path=path)


def check_model_file(path: str | Path) -> None:
    """Refuse a model file that :func:`load_model` would refuse, without building its network.

    The file is read (bounded, see :mod:`segtool.model.modelcheck`) and its
    weights are checked against its config; nothing is allocated for a network.

    Raises
    ------
    ModelError
        As :func:`load_model`, with the same one-line message.
    """
    parse_payload(read_payload(Path(path)))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a training checkpoint atomically (replacing any earlier one).

    ``payload`` holds tensors, state dicts and JSON text only, so
    :func:`load_checkpoint` can read it with ``weights_only=True``; the
    format tag and version are added here.
    """
    from segtool.io import atomic_output

    path = Path(path)
    data = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload}
    with atomic_output(path, overwrite=True) as tmp:
        torch.save(data, tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    ModelError
        If the file is missing, unreadable, or not a segtool training
        checkpoint (a model file is named as such, since it cannot resume).
    """
    path = Path(path)
    payload = torch_load(path, "checkpoint")
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        raise ModelError(
            "this is a finished model file, not a training checkpoint; resume from the "
            "last.pt in the model's .ckpt folder"
        )
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError("not a segtool training checkpoint")
    version = payload.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= CHECKPOINT_VERSION:
        raise ModelError(f"checkpoint format version {version!r} is not supported by this segtool")
    return payload
