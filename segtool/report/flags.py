"""The report's flags: which results need a second look, each with a short reason.

Pure: a list of per-image rows (dicts of figures) in, a list of flags per
row out. The thresholds live in :class:`FlagOptions`, which the page quotes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segtool.report.stats import robust_z

__all__ = ["Flag", "FlagOptions", "flag_rows", "FLAG_ORDER"]

#: Flag kinds, most serious first (the page sorts by the first flag's rank).
FLAG_ORDER = ("failed", "empty", "size-model", "count", "size", "saturated", "border")


@dataclass(frozen=True)
class Flag:
    """One reason to look at a result again: a kind from :data:`FLAG_ORDER` and a short sentence."""

    kind: str
    reason: str


@dataclass(frozen=True)
class FlagOptions:
    """Thresholds of the flags (the page states them).

    Attributes
    ----------
    z_threshold : float
        A count or median diameter whose robust z-score (median and MAD over
        the run) exceeds this in absolute value is far from the rest of the
        run. 3.5 is Iglewicz and Hoaglin's usual cut.
    min_run : int
        Fewer results than this with objects: no run-wide comparison.
    model_ratio : float
        Objects whose median diameter, as the network saw it (times the
        recorded ``scale``), is more than this many times larger or smaller
        than the model's training median are out of its range. (The shipped
        nuclei model's training images have median diameters of 9.5-49 px,
        5th-95th percentile, around its median of 21 px: within 2.5x.)
    saturated : float
        Share of pixels at the image's top value above which it is flagged.
    border_share : float
        Share of objects touching the image's edge above which it is flagged...
    border_min : int
        ...when at least this many objects touch it.
    """

    z_threshold: float = 3.5
    min_run: int = 5
    model_ratio: float = 2.5
    saturated: float = 0.01
    border_share: float = 0.3
    border_min: int = 3


def _px(value: float) -> str:
    return f"{value:.1f} px" if value < 10 else f"{value:.0f} px"


def _run_outliers(rows: Sequence[dict[str, Any]], key: str, options: FlagOptions) -> dict[int, float]:
    """Row index -> robust z of ``key`` for the rows past the threshold, among rows with objects."""
    picked = [i for i, row in enumerate(rows)
              if row.get("status") != "failed" and row.get("objects") and row.get(key) is not None]
    if len(picked) < options.min_run:
        return {}
    z = robust_z([float(rows[i][key]) for i in picked])
    return {i: float(score) for i, score in zip(picked, z) if abs(score) > options.z_threshold}


def flag_rows(rows: Sequence[dict[str, Any]], *, options: FlagOptions = FlagOptions()) -> list[list[Flag]]:
    """The flags of every row, in :data:`FLAG_ORDER`.

    Parameters
    ----------
    rows : sequence of dict
        One per result: ``status`` ("done", "skipped" or "failed"), and for
        results read ``objects``, ``median_diameter`` (px or None),
        ``border_objects``, ``border_share``; optional ``error``,
        ``empty_reason``, ``saturated_share`` (None without an image),
        ``model_diameter`` (the model's training median, px) and ``scale``
        (the resize factor predict used).
    options : FlagOptions, optional

    Returns
    -------
    flags : list of list of Flag
        Same length as ``rows``; empty lists for results that look fine.

    Examples
    --------
    >>> rows = [{"status": "done", "objects": n, "median_diameter": 20.0, "border_objects": 0, "border_share": 0.0}
    ...         for n in (10, 12, 11, 9, 10)]
    >>> rows += [{"status": "done", "objects": 0, "median_diameter": None, "border_objects": 0, "border_share": 0.0},
    ...          {"status": "failed", "error": "not an image"},
    ...          {"status": "done", "objects": 10, "median_diameter": 60.0, "border_objects": 0, "border_share": 0.0,
    ...           "model_diameter": 20.0}]
    >>> [[flag.kind for flag in row] for row in flag_rows(rows)][4:]
    [[], ['empty'], ['failed'], ['size-model', 'size']]
    >>> flag_rows(rows)[7][0].reason
    'objects 3.0x larger than the model was trained on (median 60 px vs 20 px); try --diameter 60'
    """
    counts = _run_outliers(rows, "objects", options)
    sizes = _run_outliers(rows, "median_diameter", options)
    median_count = _median(rows, "objects")
    median_size = _median(rows, "median_diameter")
    result: list[list[Flag]] = []
    for i, row in enumerate(rows):
        flags: list[Flag] = []
        if row.get("status") == "failed":
            result.append([Flag("failed", f"failed: {row.get('error') or 'no reason recorded'}")])
            continue
        objects = row.get("objects") or 0
        if objects == 0:
            why = row.get("empty_reason")
            flags.append(Flag("empty", f"no objects ({why})" if why else "no objects"))
        diameter, trained = row.get("median_diameter"), row.get("model_diameter")
        if objects and diameter and trained:
            seen = diameter * float(row.get("scale") or 1.0)
            ratio = seen / trained
            if ratio > options.model_ratio or ratio < 1 / options.model_ratio:
                word, factor = ("larger", ratio) if ratio > 1 else ("smaller", 1 / ratio)
                scaled = f" at scale {row['scale']:g}" if row.get("scale") not in (None, 1, 1.0) else ""
                flags.append(Flag("size-model", f"objects {factor:.1f}x {word} than the model was trained on "
                                                f"(median {_px(seen)}{scaled} vs {_px(trained)}); "
                                                f"try --diameter {diameter:.0f}"))
        if i in counts:
            flags.append(Flag("count", f"{objects} objects, run median {median_count:g} (robust z {counts[i]:+.1f})"))
        if i in sizes:
            flags.append(Flag("size", f"median diameter {_px(diameter)}, run median {_px(median_size)} "
                                      f"(robust z {sizes[i]:+.1f})"))
        share = row.get("saturated_share")
        if share is not None and share > options.saturated:
            flags.append(Flag("saturated", f"{100 * share:.1f}% of pixels saturated (at the top value)"))
        touching = row.get("border_objects") or 0
        if touching >= options.border_min and (row.get("border_share") or 0.0) > options.border_share:
            flags.append(Flag("border", f"{touching} of {objects} objects touch the image border"))
        result.append(flags)
    return result


def _median(rows: Sequence[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get("status") != "failed" and r.get("objects") and r.get(key) is not None]
    return float(np.median(values)) if values else 0.0
