"""What one input means for ``segtool baseline``: background fit, threshold, labels (2-D or a Z stack)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtool.io import read_image, write_float, write_labels, write_png
from segtool.memory import MemoryBudget
from segtool.outputs import OutputOptions

__all__ = ["BaselineOptions", "BaselineTask"]


@dataclass(frozen=True)
class BaselineOptions:
    """How ``segtool baseline`` segments: the background fit, the threshold and the objects.

    The defaults are those of :func:`segtool.baseline.segment_baseline`.
    ``min_size`` None means the default :data:`segtool.baseline.MIN_SIZE`,
    scaled with ``diameter`` in 2-D; Z stacks and blocks keep it fixed
    (:meth:`fixed_size`).

    Examples
    --------
    >>> BaselineOptions(split=True).fixed_size()["min_size"]
    20
    >>> BaselineOptions(min_size=5, diameter="auto").keywords()["diameter"]
    'auto'
    """

    degree: int = 2
    robust: bool = True
    polarity: str = "bright"
    threshold: str | float = "otsu"
    min_size: int | None = None
    fill_holes: bool = False
    smooth: float = 0.0
    split: bool = False
    diameter: float | str | None = None  # 2-D: "auto" or pixels; the size-dependent defaults follow it

    def keywords(self) -> dict[str, Any]:
        """Keywords of :func:`segtool.baseline.segment_baseline` (2-D, with the size rule)."""
        return {"degree": self.degree, "robust": self.robust, "polarity": self.polarity, "threshold": self.threshold,
                "min_size": self.min_size, "fill_holes": self.fill_holes, "smooth": self.smooth, "split": self.split,
                "diameter": self.diameter}

    def fixed_size(self) -> dict[str, Any]:
        """Keywords of :func:`segtool.volume.baseline.segment_baseline_3d` and ``segment_baseline_blocks``.

        A size estimate would need the whole image's (or stack's) foreground:
        ``min_size`` keeps its fixed default, and there is no ``diameter``.
        """
        from segtool.baseline import MIN_SIZE

        keywords = self.keywords()
        del keywords["diameter"]
        return {**keywords, "min_size": MIN_SIZE if self.min_size is None else self.min_size}


@dataclass(frozen=True)
class BaselineTask:
    """Per-file work of ``segtool baseline`` (picklable for ``--jobs``)."""

    output: OutputOptions
    options: BaselineOptions
    save_background: bool = False
    save_corrected: bool = False
    save_overlay: bool = False
    channel: int | None = None
    plane: int | None = None
    memory: MemoryBudget | None = None  # the memory guard (--max-memory)
    z_spacing: float | None = None  # Z stacks (no --plane) are segmented in 3-D

    def planned_outputs(self, path: Path) -> dict[str, Path]:
        outputs = {"labels": self.output.path(path, "_labels.tif")}
        if self.save_background:
            outputs["background"] = self.output.path(path, "_background.tif")
        if self.save_corrected:
            outputs["corrected"] = self.output.path(path, "_corrected.tif")
        if self.save_overlay:
            outputs["overlay"] = self.output.path(path, "_overlay.png")
        return outputs

    def run(self, path: Path) -> dict[str, Any]:
        from segtool.baseline import contrast_hint, segment_baseline
        from segtool.overlay import outline_overlay
        from segtool.tasks.stack import baseline_stack

        figures = baseline_stack(self, path)
        if figures is not None:
            return figures
        image = read_image(path, channel=self.channel, plane=self.plane, memory=self.memory)
        result = segment_baseline(image.data, **self.options.keywords())
        outputs = self.planned_outputs(path)
        calibration = {"pixel_size": image.pixel_size, "unit": image.unit, "overwrite": self.output.overwrite}
        write_labels(outputs["labels"], result.labels, **calibration)
        if self.save_background:
            write_float(outputs["background"], result.background, **calibration)
        if self.save_corrected:
            write_float(outputs["corrected"], result.corrected, **calibration)
        if self.save_overlay:
            write_png(outputs["overlay"], outline_overlay(image.data, result.labels), overwrite=self.output.overwrite)
        hint = contrast_hint(result.labels, result.polarity)
        return {
            "objects": int(result.labels.max()),
            # None (JSON null) when the image was flat: there was nothing to threshold.
            "threshold": None if result.threshold is None else round(float(result.threshold), 6),
            "empty_reason": result.empty_reason,
            "polarity": result.polarity,
            "diameter": None if result.diameter is None else round(float(result.diameter), 2),
            "min_size": result.min_size,
            "background": result.fit.summary(),
            "shape": list(image.data.shape),
            **({"hint": hint} if hint else {}),
        }
