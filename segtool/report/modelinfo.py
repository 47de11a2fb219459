"""What the report says about a model, read from its file without PyTorch.

A segtool model file is PyTorch's zip format; its config and metadata are
JSON text inside the pickled dict. This module unpickles that dict with an
allow-list that knows tensors only as placeholders (their bytes are never
read), so the report shows the model's version and training diameter
without importing torch and without running code from the file. A
bioimage.io package from ``segtool model export`` carries the same JSON as
``segtool_model.json``.
"""

from __future__ import annotations

import collections
import json
import math
import pickle
import zipfile
from pathlib import Path
from typing import Any

from segtool.errors import ModelError
from segtool.model.shipped import resolve_model

__all__ = ["read_model_header", "trained_diameter", "describe_model"]

#: Where a model may record the median object diameter of its training data (as predict looks for it).
DIAMETER_KEYS = ("median_diameter", "object_diameter", "diameter")


def _placeholder(*args: Any, **kwargs: Any) -> None:
    return None


class _HeaderUnpickler(pickle.Unpickler):
    """Rebuilds plain containers; tensors and storages become None; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module.startswith("torch") and (name.startswith("_rebuild") or name.endswith("Storage") or name == "device"):
            return _placeholder
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a model file")

    def persistent_load(self, pid: Any) -> None:
        return None


def read_model_header(path: str | Path) -> dict[str, Any]:
    """The config and metadata of a segtool model file or package, as dicts, without PyTorch.

    Raises
    ------
    ModelError
        If the file is missing, not a zip, or holds no segtool model.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            packaged = [n for n in names if n.rsplit("/", 1)[-1] == "segtool_model.json"]
            if packaged:
                data = json.loads(archive.read(packaged[0]))
                return {"config": data.get("config") or {}, "metadata": data.get("metadata") or {}}
            pickled = [n for n in names if n.endswith("data.pkl")]
            if not pickled:
                raise ModelError(f"{path}: not a segtool model file")
            payload = _HeaderUnpickler(archive.open(pickled[0])).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, EOFError, AttributeError) as err:
        raise ModelError(f"{path}: cannot read the model's header ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != "segtool-unet":
        raise ModelError(f"{path}: not a segtool model file")
    try:
        return {"config": json.loads(payload["config"]), "metadata": json.loads(payload["metadata"])}
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"{path}: the model's header is damaged ({err})") from None


def trained_diameter(config: dict[str, Any], metadata: dict[str, Any]) -> float | None:
    """The median object diameter (px) of the model's training data, None when not recorded.

    Looked up where predict's ``--diameter`` looks: the config, its
    post-processing values, then the metadata.

    Examples
    --------
    >>> trained_diameter({"postprocess": {"median_diameter": 21.0}}, {})
    21.0
    >>> trained_diameter({}, {"median_diameter": 0}) is None
    True
    """
    for source in (config, config.get("postprocess") or {}, metadata):
        for key in DIAMETER_KEYS:
            value = source.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
                return float(value)
    return None


def describe_model(spec: str) -> dict[str, Any]:
    """Name, version and training diameter of the model a result names (a shipped name or a file).

    Returns
    -------
    info : dict
        ``name``, ``path`` (or None), ``created``, ``segtool_version``,
        ``median_diameter`` (px or None), and ``error`` (a one-line reason
        when the file could not be read; the other values are then None).

    Examples
    --------
    >>> info = describe_model("nuclei")
    >>> info["median_diameter"], info["segtool_version"], info["error"]
    (20.96, '0.1.0', None)
    >>> describe_model("no-such-model.pt")["error"].startswith("model file not found")
    True
    """
    info: dict[str, Any] = {"name": spec, "path": None, "created": None, "segtool_version": None,
                            "median_diameter": None, "error": None}
    try:
        path, _ = resolve_model(spec)
        info["path"] = str(path)
        header = read_model_header(path)
    except ModelError as err:
        info["error"] = str(err).splitlines()[0]
        return info
    metadata = header["metadata"]
    info["created"] = metadata.get("created")
    info["segtool_version"] = metadata.get("segtool_version")
    info["median_diameter"] = trained_diameter(header["config"], metadata)
    return info
