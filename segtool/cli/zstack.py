"""The ``--z-spacing`` option shared by the commands that read Z stacks (see :mod:`segtool.volume`)."""

from __future__ import annotations

import math
from typing import Annotated, Optional

import typer

__all__ = ["ZSpacing"]

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
