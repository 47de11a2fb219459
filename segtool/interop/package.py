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

from segtool.errors import ModelError, first_line

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
    except Exception:  # noqa: BLE001  any zip that cannot be listed is not a package (load_model then names it)
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
        The :class:`~segtool.model.config.UNetConfig` as a dict.
    metadata : dict
        Training summary of the original model file.
    state_dict : dict of str to Tensor
        Weights of :class:`~segtool.model.model.UNet` (same parameter names).

    Raises
    ------
    ModelError
        If the zip is damaged, not a bioimage.io package, or not one of
        segtool's (naming what is missing).
    """
    import torch

    from segtool.model.modelcheck import (MAX_TEXT_BYTES, check_torch_archive, check_zip_names, read_entry,
                                         weights_entry_limit)

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            check_zip_names(archive, "package")
            rdf_name = next((n for n in names if n in _RDF_NAMES or n.endswith(".bioimageio.yaml")), None)
            if rdf_name is None:
                raise ModelError("a zip file but not a bioimage.io package: no rdf.yaml inside")
            rdf_text = read_entry(archive, rdf_name, MAX_TEXT_BYTES, "package").decode("utf-8", errors="replace")
            if _MODEL_JSON not in names:
                raise _foreign(names, rdf_text)
            info = json.loads(read_entry(archive, _MODEL_JSON, MAX_TEXT_BYTES, "package"))
            if _WEIGHTS not in names:
                raise ModelError(f"segtool package is damaged: {_WEIGHTS} is missing")
            _check_info(info)
            # the config says how large the weights can be: a bigger entry is refused before it is decompressed
            weights = read_entry(archive, _WEIGHTS, weights_entry_limit(info["config"]), "package")
    except ModelError:
        raise
    except (ValueError, RecursionError) as err:  # JSON (zipfile's own complaints are not ValueErrors)
        raise ModelError(f"segtool package is damaged: {_MODEL_JSON} is not valid JSON ({str(err)[:120]})") from None
    except Exception as err:  # noqa: BLE001  bad CRC, encrypted or unknown compression, zlib errors: all "damaged"
        raise ModelError(f"damaged zip file: {first_line(err)[:120]}") from None
    check_torch_archive(weights, f"package's {_WEIGHTS}")
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  any failure here means the weights file is not plain weights
        raise ModelError(f"segtool package is damaged: {_WEIGHTS} is not a readable state dict ({str(err)[:120]})") from None
    if not isinstance(state, dict):
        raise ModelError(f"segtool package is damaged: {_WEIGHTS} is not a state dict")
    return info["config"], info.get("metadata", {}), state


def _check_info(info: Any) -> None:
    """Refuse a ``segtool_model.json`` that is not segtool's, or of another format version."""
    if not isinstance(info, dict) or info.get("format") != "segtool-unet-bioimageio":
        raise ModelError(f"segtool package is damaged: {_MODEL_JSON} does not describe a segtool U-Net")
    version = info.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= 1:
        raise ModelError(f"segtool package format version {version!r} is not supported by this segtool "
                         "(supports 1..1); upgrade segtool")
    if not isinstance(info.get("config"), dict) or not isinstance(info.get("metadata", {}), dict):
        raise ModelError(f"segtool package is damaged: {_MODEL_JSON} has no config")
