"""The ``--z-spacing`` option shared by the commands that read Z stacks (see :mod:`segtool.volume`)."""

from __future__ import annotations

import math
from typing import Annotated, Optional

import typer

__all__ = ["ZSpacing", "ZMode", "StitchThreshold"]

def _positive(value: float | None) -> float | None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter(f"must be a number > 0, got {value}")
    return value


ZSpacing = Annotated[
    Optional[float],
    typer.Option(
        "--z-spacing",
        callback=_positive,
        help="Z stacks: distance between planes, in the unit of the x-y pixel size (in pixel widths when the file "
        "has no calibration). Default: the file's own z step, else 1. A Z stack without --plane is segmented in 3-D.",
        rich_help_panel="Inputs and outputs",
        show_default=False,
    ),
]

def _mode(value: str) -> str:
    if value not in ("auto", "stitch", "watershed"):
        raise typer.BadParameter(f"must be auto, stitch or watershed, got {value!r}")
    return value


ZMode = Annotated[
    str,
    typer.Option(
        "--z-mode",
        callback=_mode,
        help="Z stacks: 'watershed' grows 3-D seeds of the stacked network maps (more accurate; holds the maps "
        "in memory); 'stitch' links each plane's objects to the plane above by IoU (memory bounded by planes); "
        "'auto': watershed up to 2**24 voxels (e.g. 64x512x512), stitch above.",
        rich_help_panel="Z stacks",
    ),
]
StitchThreshold = Annotated[
    float,
    typer.Option(
        "--stitch-threshold",
        min=0.01,
        max=1.0,
        help="Z stacks, --z-mode stitch: IoU an object needs with one of the plane above to continue it.",
        rich_help_panel="Z stacks",
    ),
]
