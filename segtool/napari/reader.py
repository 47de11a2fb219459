"""napari reader: segtool's outputs as layers, with the pixel size as scale.

Returns napari's plain layer-data tuples ``(data, kwargs, layer_type)``, so
nothing here imports napari.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from segtool.errors import InputError

__all__ = ["get_reader", "prob_channel_names", "read_labels_zarr", "read_labels_tiff", "read_prob_tiff", "read_path"]

LayerData = tuple[Any, dict[str, Any], str]

_LABEL_ENDINGS = ("_labels.tif", "_labels.tiff")
_PROB_ENDINGS = ("_prob.tif", "_prob.tiff")


def prob_channel_names(n_channels: int) -> list[str]:
    """Names of the maps in a ``_prob.tif`` written by ``segtool predict --save-prob``.

    Examples
    --------
    >>> prob_channel_names(4)
    ['background', 'interior', 'boundary', 'distance']
    >>> prob_channel_names(5)
    ['map 0', 'map 1', 'map 2', 'map 3', 'map 4']
    """
    names = {2: ["foreground", "distance"], 3: ["background", "interior", "boundary"],
             4: ["background", "interior", "boundary", "distance"]}
    return names.get(n_channels, [f"map {i}" for i in range(n_channels)])


def _stem(path: Path, endings: tuple[str, ...]) -> str:
    name = path.name
    for ending in endings:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return path.stem


def _calibration(pixel_size, unit) -> dict[str, Any]:
    if pixel_size is None:
        return {"metadata": {}}
    return {"scale": tuple(float(v) for v in pixel_size), "metadata": {"unit": unit, "pixel_size": list(pixel_size)}}


def read_labels_tiff(path: str | os.PathLike) -> list[LayerData]:
    """A ``*_labels.tif`` as one Labels layer named after the image it came from.

    Raises
    ------
    InputError
        If the file is not a readable label image.
    """
    from segtool.io import read_labels

    path = Path(path)
    labels = read_labels(path)
    kwargs = {"name": f"{_stem(path, _LABEL_ENDINGS)} labels", **_calibration(labels.pixel_size, labels.unit)}
    kwargs["metadata"]["source"] = str(path)
    return [(labels.data, kwargs, "labels")]


def read_prob_tiff(path: str | os.PathLike) -> list[LayerData]:
    """A ``*_prob.tif`` (C, Y, X float maps) as one image layer per map, in [0, 1].

    Raises
    ------
    InputError
        If the file is not a readable TIFF of maps.
    """
    import tifffile

    from segtool.io import read_image

    path = Path(path)
    try:
        maps = tifffile.imread(path)
    except Exception as err:  # noqa: BLE001  tifffile raises many kinds for a bad file; all mean "unreadable"
        raise InputError(f"{path}: not a readable TIFF ({err})") from None
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 2:
        maps = maps[np.newaxis]
    if maps.ndim != 3:
        raise InputError(f"{path}: expected (C, Y, X) probability maps, got shape {maps.shape}")
    first = read_image(path, channel=0) if maps.shape[0] > 1 else read_image(path)
    stem = _stem(path, _PROB_ENDINGS)
    layers = []
    for name, channel in zip(prob_channel_names(maps.shape[0]), maps):
        kwargs = {"name": f"{stem} {name}", "contrast_limits": (0.0, 1.0), "blending": "additive",
                  **_calibration(first.pixel_size, first.unit)}
        kwargs["metadata"]["source"] = str(path)
        layers.append((channel, kwargs, "image"))
    return layers


def _zarr_scale(multiscale: dict[str, Any], index: int) -> tuple[tuple[float, ...] | None, str | None]:
    dataset = multiscale["datasets"][index]
    scale = None
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            scale = tuple(float(v) for v in transform["scale"])
    units = [axis.get("unit") for axis in multiscale.get("axes", []) if isinstance(axis, dict)]
    return scale, next((u for u in units if u), None)


def _labels_groups(group) -> list[tuple[str, Any]]:
    """The label images of an OME-Zarr group: itself if it is one, else those listed under ``labels/``."""
    attrs = dict(group.attrs)
    if "image-label" in attrs and "multiscales" in attrs:
        return [("", group)]
    found = []
    if "labels" in group:
        listed = dict(group["labels"].attrs).get("labels", [])
        for name in listed:
            if name in group["labels"]:
                found.append((name, group["labels"][name]))
    return found


def read_labels_zarr(path: str | os.PathLike) -> list[LayerData]:
    """The label images of an OME-Zarr store (NGFF 0.4) as Labels layers, lazily (Dask), with their scale.

    Handles a store that is itself a label image (``segtool predict --zarr``)
    and an image whose ``labels/`` group lists label images.

    Raises
    ------
    InputError
        If zarr is not installed, or the store holds no OME-Zarr labels.
    """
    try:
        import dask.array as da
        import zarr
    except ImportError:
        raise InputError("reading OME-Zarr needs zarr and dask: pip install 'segtool[napari]'") from None
    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as err:  # noqa: BLE001  zarr raises several kinds for a folder that is not a group
        raise InputError(f"{path}: not a readable Zarr group ({str(err).splitlines()[0][:120]})") from None
    layers = []
    base = path.name[: -len(".ome.zarr")] if path.name.lower().endswith(".ome.zarr") else path.stem
    for name, labels_group in _labels_groups(group):
        multiscale = dict(labels_group.attrs)["multiscales"][0]
        arrays = [da.from_zarr(labels_group[d["path"]]) for d in multiscale["datasets"]]
        scale, unit = _zarr_scale(multiscale, 0)
        kwargs: dict[str, Any] = {"name": f"{base} {name} labels".replace("  ", " "),
                                  "metadata": {"source": str(path), "unit": unit}, "multiscale": len(arrays) > 1}
        if scale is not None:
            kwargs["scale"] = scale
        layers.append((arrays if len(arrays) > 1 else arrays[0], kwargs, "labels"))
    if not layers:
        raise InputError(f"{path}: no OME-Zarr labels in this store")
    return layers


def read_path(path: str | os.PathLike) -> list[LayerData]:
    """Layers for one segtool output, chosen by its name (``_labels.tif``, ``_prob.tif``, ``.zarr``).

    Raises
    ------
    InputError
        If the name is not a segtool output, or the file is unreadable.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(_LABEL_ENDINGS):
        return read_labels_tiff(path)
    if name.endswith(_PROB_ENDINGS):
        return read_prob_tiff(path)
    if name.endswith(".zarr") or path.is_dir():
        return read_labels_zarr(path)
    raise InputError(f"{path}: not a segtool output (*_labels.tif, *_prob.tif or OME-Zarr labels)")


def _accepted(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith(_LABEL_ENDINGS + _PROB_ENDINGS):
        return path.is_file()
    if name.endswith(".zarr") and path.is_dir():
        try:
            attrs = json.loads((path / ".zattrs").read_text()) if (path / ".zattrs").is_file() else \
                json.loads((path / "zarr.json").read_text()).get("attributes", {})
        except (OSError, ValueError):
            return False
        return "image-label" in attrs or (path / "labels").is_dir()
    return False


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """npe2 reader hook: a reader function when every path is a segtool output, else None (napari tries others)."""
    paths = [Path(p) for p in ([path] if isinstance(path, (str, os.PathLike)) else path)]
    if not paths or not all(_accepted(p) for p in paths):
        return None
    return _read_all


def _read_all(path: str | list[str]) -> list[LayerData]:
    paths = [path] if isinstance(path, (str, os.PathLike)) else path
    layers: list[LayerData] = []
    for item in paths:
        layers.extend(read_path(item))
    return layers
