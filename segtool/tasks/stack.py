"""What one Z-stack input means for ``baseline``, ``predict``, ``export``/``measure`` and ``evaluate``.

Each command's per-file task calls the matching function here first when no
``--plane`` was given; it returns None for anything that is not a Z stack (the
2-D path then runs unchanged) and the figures of the 3-D run otherwise. The
task object is passed whole: these functions read its option fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segtool.errors import InputError
from segtool.volume.io import probe_stack, read_label_volume, read_volume
from segtool.volume.writers import write_float_volume, write_label_volume

__all__ = ["is_z_stack", "baseline_stack", "predict_stack_task", "read_labels_any", "export_stack"]


def is_z_stack(path: Path, *, plane: int | None = None, z_spacing: float | None = None) -> bool:
    """Whether ``path`` should be handled in 3-D: a Z stack and no ``--plane`` given."""
    return plane is None and probe_stack(path, z_spacing=z_spacing) is not None


def _middle_overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Outlines of the middle plane, for a quick look at a 3-D result."""
    from segtool.overlay import outline_overlay

    z = image.shape[0] // 2
    return outline_overlay(image[z], labels[z])


def baseline_stack(task: Any, path: Path) -> dict[str, Any] | None:
    """``segtool baseline`` on a Z stack; None when ``path`` is not one (or ``--plane`` was given).

    ``task`` is a :class:`segtool.tasks.baseline.BaselineTask`.
    """
    from segtool.io import write_png
    from segtool.volume.baseline import segment_baseline_3d

    z_spacing = getattr(task, "z_spacing", None)
    if not is_z_stack(path, plane=task.plane, z_spacing=z_spacing):
        return None
    volume = read_volume(path, channel=task.channel, z_spacing=z_spacing)
    result = segment_baseline_3d(volume.data, z_spacing=volume.z_spacing, **task.options.fixed_size())
    outputs = task.planned_outputs(path)
    keep = {"voxel_size": volume.voxel_size, "unit": volume.unit, "overwrite": task.output.overwrite}
    write_label_volume(outputs["labels"], result.labels, **keep)
    if "background" in outputs:
        write_float_volume(outputs["background"], result.fit.evaluate(), **keep)
    if "corrected" in outputs:
        write_float_volume(outputs["corrected"], result.corrected, **keep)
    if "overlay" in outputs:
        write_png(outputs["overlay"], _middle_overlay(volume.data, result.labels), overwrite=task.output.overwrite)
    return {
        "objects": int(result.labels.max()),
        "threshold": round(float(result.threshold), 6),
        "polarity": result.polarity,
        "background": result.fit.summary(),
        "shape": list(volume.data.shape),
        "voxel_size": list(volume.voxel_size) if volume.voxel_size else None,
        "z_spacing": round(volume.z_spacing, 6),
    }


def predict_stack_task(task: Any, path: Path) -> dict[str, Any] | None:
    """``segtool predict`` on a Z stack; None when ``path`` is not one (or ``--plane`` was given).

    ``task`` is a :class:`segtool.tasks.predict.PredictTask`. ``--save-prob`` is
    2-D only; ``--save-overlay`` shows the middle plane; the size estimate of
    ``--diameter auto`` is made once per stack, on its middle plane.
    """
    from segtool.volume.predict import StackPredictOptions, predict_stack_file

    if not is_z_stack(path, plane=task.plane, z_spacing=task.z_spacing):
        return None
    if task.save_prob:
        raise InputError("--save-prob is not available for Z stacks (it writes 2-D maps); use --plane N for one plane")
    # tiling.scale None: estimated once per stack, from its middle plane
    options = StackPredictOptions(mode=task.z_mode, stitch_threshold=task.stitch_threshold, tiling=task.tiling,
                                  objects=task.objects)
    outputs = task.planned_outputs(path)
    figures = predict_stack_file(path, task.model(), outputs["labels"], channel=task.channel, z_spacing=task.z_spacing,
                                 options=options, overwrite=task.output.overwrite, overlay_path=outputs.get("overlay"))
    figures["predict_seconds"] = figures.pop("seconds")
    if task.diameter is not None:
        figures.update(diameter=task.diameter, diameter_source="given")
    return figures


def read_labels_any(path: Path, *, memory: Any = None) -> tuple[np.ndarray, tuple[float, ...] | None, str | None]:
    """Labels of a 2-D image or a Z stack, with the pixel or voxel size and unit.

    Used by ``evaluate``: a Z-stack label file is read whole (3-D IoU), any
    other label file as before, under the memory guard ``memory``
    (a :class:`segtool.memory.MemoryBudget`, or None).
    """
    if probe_stack(path) is not None:
        volume = read_label_volume(path)
        return volume.data, volume.voxel_size, volume.unit
    from segtool.io import read_labels

    image = read_labels(path, memory=memory)
    return image.data, image.pixel_size, image.unit


def export_stack(task: Any, path: Path) -> dict[str, Any] | None:
    """``segtool export``/``measure`` on a Z-stack label file; None when it is not one.

    ``task`` is a :class:`segtool.tasks.export.ExportTask`. CSV gets 3-D
    measurements (:func:`segtool.volume.measure.object_table_3d`); the ROI zip
    has one ROI per object per plane with its Z position; GeoJSON is refused
    (QuPath's GeoJSON has no z); labels/binary are written as stacks; png
    shows the middle plane.
    """
    from segtool import export
    from segtool.io import write_png
    from segtool.overlay import color_labels
    from segtool.volume.measure import object_table_3d, stack_rois, summary_row_3d

    if not is_z_stack(path, plane=task.plane):
        return None
    labels = read_label_volume(path)
    image = None
    if task.image is not None:
        from segtool.pairing import find_image  # the same image lookup as in 2-D

        image_path = find_image(path, task.image)
        try:
            image = read_volume(image_path, channel=task.channel)
        except InputError as err:
            raise InputError(f"image {image_path}: {err}") from err
        if image.data.shape != labels.data.shape:
            raise InputError(f"image {image_path} is {image.data.shape} but the labels are {labels.data.shape}")
    voxel_size, unit = labels.voxel_size, labels.unit
    if voxel_size is None and image is not None:
        voxel_size, unit = image.voxel_size, image.unit
    data = labels.data
    if "geojson" in task.formats and not task.summary:
        raise InputError("GeoJSON has no z coordinate: a Z stack exports as imagej-roi (per-plane ROIs with their Z) or csv")
    table = None
    if task.summary or "csv" in task.formats:
        table = object_table_3d(data, image=None if image is None else image.data, voxel_size=voxel_size, unit=unit)
    if task.summary:
        return summary_row_3d(data, table, voxel_size=voxel_size, unit=unit)
    outputs = task.planned_outputs(path)
    keep = {"overwrite": task.output.overwrite}
    for name, target in outputs.items():
        if name == "labels":
            write_label_volume(target, data, voxel_size=voxel_size, unit=unit, **keep)
        elif name == "binary":
            write_label_volume(target, (data > 0).astype(np.uint16) * 255, voxel_size=voxel_size, unit=unit, **keep)
        elif name == "png":
            z = data.shape[0] // 2
            picture = color_labels(data[z]) if image is None else _middle_overlay(image.data, data)
            write_png(target, picture, **keep)
        elif name == "imagej-roi":
            export.write_roi_zip(target, stack_rois(data), **keep)
        elif name == "csv":
            export.write_csv(target, table, **keep)
    return {
        "objects": int(len(np.unique(data)) - (1 if (data == 0).any() else 0)),
        "shape": list(data.shape),
        "voxel_size": list(voxel_size) if voxel_size is not None else None,
        "unit": unit if voxel_size is not None else None,
    }
