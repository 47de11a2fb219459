"""napari writer: save a Labels layer the way ``segtool export`` does.

The file's ending picks the format: ``.tif``/``.tiff`` a label TIFF (uint16,
uint32 above 65535 objects, zlib, with the layer's scale as pixel size),
``.zip`` ImageJ ROIs (Fiji's ROI Manager), ``.geojson`` QuPath objects, ``.csv``
one row per object. Files appear atomically (segtool.io.atomic_output);
napari's save dialog has already asked before an existing file is replaced.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


from segtool.errors import InputError
from segtool.labels import check_labels, label_dtype

__all__ = ["WRITER_ENDINGS", "write_labels"]

#: Endings the writer understands, and what each writes.
WRITER_ENDINGS = {".tif": "label TIFF", ".tiff": "label TIFF", ".zip": "ImageJ ROI zip", ".geojson": "QuPath GeoJSON",
                  ".csv": "per-object CSV"}


def _calibration(meta: dict[str, Any]) -> tuple[tuple[float, float] | None, str | None]:
    """Pixel size from the layer's scale (None when it is the default 1), unit from its metadata."""
    scale = meta.get("scale")
    unit = (meta.get("metadata") or {}).get("unit")
    if scale is None:
        return None, None
    values = tuple(float(v) for v in list(scale)[-2:])
    if len(values) != 2 or (values == (1.0, 1.0) and not unit):
        return None, None
    return values, unit


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer: write one Labels layer, return the written path.

    Parameters
    ----------
    path : str
        Destination; its ending picks the format (:data:`WRITER_ENDINGS`).
    data : (Y, X) array_like of int
        The layer's labels (a Dask or multiscale layer gives its full-resolution level).
    meta : dict
        The layer's attributes (``scale``, ``metadata``) as napari passes them.

    Returns
    -------
    paths : list of str

    Raises
    ------
    InputError
        If the ending is not one of :data:`WRITER_ENDINGS` or the labels are
        not a 2-D integer image.
    """
    from segtool import export
    from segtool.measure import object_table
    from segtool.io import write_labels as write_label_tiff

    target = Path(path)
    ending = target.suffix.lower()
    if ending not in WRITER_ENDINGS:
        raise InputError(f"{target}: segtool writes {', '.join(WRITER_ENDINGS)}; not {ending or 'a file without ending'}")
    if isinstance(data, (list, tuple)):  # multiscale: the first level is full resolution
        data = data[0]
    try:
        labels = check_labels(data, ndim=2)
    except InputError as err:
        raise InputError(f"{target}: {err}") from None
    labels = labels.astype(label_dtype(labels.max() if labels.size else 0), copy=False)
    pixel_size, unit = _calibration(meta)
    if ending in (".tif", ".tiff"):
        write_label_tiff(target, labels, pixel_size=pixel_size, unit=unit, overwrite=True)
    elif ending == ".zip":
        export.write_roi_zip(target, export.imagej_rois(export.label_polygons(labels)), overwrite=True)
    else:
        table = object_table(labels, pixel_size=pixel_size, unit=unit)
        if ending == ".geojson":
            export.write_geojson(target, export.geojson_features(export.label_polygons(labels), table=table),
                                 overwrite=True)
        else:
            export.write_csv(target, table, overwrite=True)
    return [os.fspath(target)]
