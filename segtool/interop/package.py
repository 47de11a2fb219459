"""Read segtool's own bioimage.io packages back as a model.

A package written by :func:`segtool.interop.bioimageio.export_bioimageio`
carries ``segtool_model.json`` (config and metadata) and ``weights.pt`` (the
state dict, read with ``weights_only=True``), so loading it rebuilds exactly
the network of the ``.pt`` it came from. Packages from other tools are named
as such, with what they lack. Only the standard library and PyTorch are
needed: reading a package does not require the ``bioimageio`` extra.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

from segtool.errors import ModelError

__all__ = ["is_bioimageio_package", "read_package"]

_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
_MODEL_JSON = "segtool_model.json"
_WEIGHTS = "weights.pt"


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """True for a zip file holding a bioimage.io description (``rdf.yaml`` or ``*bioimageio.yaml``).

    PyTorch's own ``.pt`` files are zips too, but have no such member.
    """
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n in _RDF_NAMES or n.endswith(".bioimageio.yaml") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _foreign(names: list[str], rdf_text: str) -> ModelError:
    """The one-line explanation for a bioimage.io package segtool did not write."""
    weights = [fmt for fmt in ("pytorch_state_dict", "torchscript", "onnx", "tensorflow_saved_model_bundle",
                               "keras_hdf5") if f"{fmt}:" in rdf_text]
    held = f" (weights: {', '.join(weights)})" if weights else ""
    return ModelError(
        f"a bioimage.io model package not written by segtool{held}: it has no {_MODEL_JSON} with a segtool U-Net "
        "config, so segtool cannot rebuild its network or post-processing; run it with bioimageio.core "
        "(`bioimageio predict`) or another bioimage.io consumer"
    )


def read_package(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Config, metadata and state dict of a segtool bioimage.io package.

    Parameters
    ----------
    path : path-like
        A ``.zip`` written by ``segtool model export --format bioimageio``.

    Returns
    -------
    config : dict
        The :class:`~segtool.unet.config.UNetConfig` as a dict.
    metadata : dict
        Training summary of the original model file.
    state_dict : dict of str to Tensor
        Weights of :class:`~segtool.unet.model.UNet` (same parameter names).

    Raises
    ------
    ModelError
        If the zip is damaged, not a bioimage.io package, or not one of
        segtool's (naming what is missing).
    """
    import torch

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            rdf_name = next((n for n in names if n in _RDF_NAMES or n.endswith(".bioimageio.yaml")), None)
            if rdf_name is None:
                raise ModelError("a zip file but not a bioimage.io package: no rdf.yaml inside")
            rdf_text = archive.read(rdf_name).decode("utf-8", errors="replace")
            if _MODEL_JSON not in names:
                raise _foreign(names, rdf_text)
            info = json.loads(archive.read(_MODEL_JSON))
            if _WEIGHTS not in names:
                raise ModelError(f"segtool package is damaged: {_WEIGHTS} is missing")
            weights = archive.read(_WEIGHTS)
    except zipfile.BadZipFile as err:
        raise ModelError(f"damaged zip file: {err}") from None
    except ValueError as err:  # JSON
        raise ModelError(f"segtool package is damaged: {_MODEL_JSON} is not valid JSON ({err})") from None
    if not isinstance(info, dict) or info.get("format") != "segtool-unet-bioimageio":
        raise ModelError(f"segtool package is damaged: {_MODEL_JSON} does not describe a segtool U-Net")
    if not isinstance(info.get("format_version"), int) or info["format_version"] > 1:
        raise ModelError(f"segtool package format version {info.get('format_version')!r} is not supported; upgrade segtool")
    if not isinstance(info.get("config"), dict) or not isinstance(info.get("metadata", {}), dict):
        raise ModelError(f"segtool package is damaged: {_MODEL_JSON} has no config")
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  any failure here means the weights file is not plain weights
        raise ModelError(f"segtool package is damaged: {_WEIGHTS} is not a readable state dict ({str(err)[:120]})") from None
    if not isinstance(state, dict):
        raise ModelError(f"segtool package is damaged: {_WEIGHTS} is not a state dict")
    return info["config"], info.get("metadata", {}), state
