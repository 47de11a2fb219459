"""What one label file means for ``segtool export`` and ``segtool measure``: formats, tables, summaries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtool.errors import InputError
from segtool.io import Image, read_image, read_labels
from segtool.memory import MemoryBudget
from segtool.outputs import OutputOptions
from segtool.pairing import find_image, mask_stem

__all__ = ["FORMAT_SUFFIXES", "OVERLAY_SUFFIX", "ExportTask"]

#: Output name ending of each format (``<stem><suffix>``); png depends on --image.
FORMAT_SUFFIXES = {
    "labels": "_labels.tif",
    "binary": "_binary.tif",
    "png": "_labels.png",
    "imagej-roi": "_rois.zip",
    "geojson": ".geojson",
    "csv": "_objects.csv",
}
OVERLAY_SUFFIX = "_overlay.png"



@dataclass(frozen=True)
class ExportTask:
    """Per-file work of ``segtool export`` / ``segtool measure`` (picklable for ``--jobs``)."""

    formats: tuple[str, ...]
    output: OutputOptions = OutputOptions()
    image: Path | None = None
    channel: int | None = None
    plane: int | None = None
    summary: bool = False  # measure --summary: compute the summary row, write nothing
    memory: MemoryBudget | None = None  # the memory guard (--max-memory)

    def planned_outputs(self, path: Path) -> dict[str, Path]:
        if self.summary:
            return {}
        folder = self.output.folder if self.output.folder is not None else path.parent
        stem = mask_stem(path)
        outputs = {}
        for name in self.formats:
            suffix = OVERLAY_SUFFIX if name == "png" and self.image is not None else FORMAT_SUFFIXES[name]
            target = folder / f"{stem}{suffix}"
            if target.exists() and path.exists() and target.resolve() == path.resolve():
                raise InputError(f"the {name} output would replace the input itself; choose another folder with -o")
            outputs[name] = target
        return outputs

    def _read(self, path: Path) -> tuple[Image, Image | None]:
        labels = read_labels(path, plane=self.plane, memory=self.memory)
        if self.image is None:
            return labels, None
        image_path = find_image(path, self.image)
        try:
            image = read_image(image_path, channel=self.channel, plane=self.plane, memory=self.memory)
        except InputError as err:
            raise InputError(f"image {image_path}: {err}") from err
        if image.data.shape != labels.data.shape:
            raise InputError(f"image {image_path} is {image.data.shape} but the labels are {labels.data.shape}")
        return labels, image

    def run(self, path: Path) -> dict[str, Any]:
        from segtool import export
        from segtool.io import write_labels, write_png
        from segtool.measure import object_table, summary_row
        from segtool.overlay import color_labels, outline_overlay
        from segtool.tasks.stack import export_stack

        figures_3d = export_stack(self, path)  # a Z-stack label file (no --plane): 3-D measurements, per-plane ROIs
        if figures_3d is not None:
            return figures_3d
        labels, image = self._read(path)
        data = labels.data
        # Calibration from the labels, else from the image they were made from.
        pixel_size, unit = labels.pixel_size, labels.unit
        if pixel_size is None and image is not None:
            pixel_size, unit = image.pixel_size, image.unit
        table = None
        if self.summary or {"csv", "geojson"} & set(self.formats):
            table = object_table(data, image=None if image is None else image.data, pixel_size=pixel_size, unit=unit)
        figures: dict[str, Any] = {"objects": int(len(table["label"])) if table is not None else int(len(_labels_present(data)))}
        if self.summary:
            figures.update(summary_row(data, table))
            figures["objects"] = int(figures["objects"])
            return figures

        outputs = self.planned_outputs(path)
        polygons = export.label_polygons(data) if {"imagej-roi", "geojson"} & set(self.formats) else None
        keep = {"overwrite": self.output.overwrite}
        for name, target in outputs.items():
            if name == "labels":
                write_labels(target, data, pixel_size=pixel_size, unit=unit, **keep)
            elif name == "binary":
                export.write_binary_tiff(target, data, pixel_size=pixel_size, unit=unit, **keep)
            elif name == "png":
                picture = color_labels(data) if image is None else outline_overlay(image.data, data)
                write_png(target, picture, **keep)
            elif name == "imagej-roi":
                export.write_roi_zip(target, export.imagej_rois(polygons), **keep)
            elif name == "geojson":
                export.write_geojson(target, export.geojson_features(polygons, table=table), **keep)
            elif name == "csv":
                export.write_csv(target, table, **keep)
        figures.update(
            {
                "shape": list(data.shape),
                "pixel_size": list(pixel_size) if pixel_size is not None else None,
                "unit": unit if pixel_size is not None else None,
            }
        )
        return figures


def _labels_present(data) -> list[int]:
    import numpy as np

    counts = np.bincount(data.reshape(-1)) if data.dtype.itemsize <= 2 else None
    if counts is not None:
        return np.flatnonzero(counts[1:]).tolist()
    return [v for v in np.unique(data).tolist() if v != 0]
