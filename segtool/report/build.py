"""Build a report: measure every result (in worker processes with ``jobs``), flag, and write ``index.html``.

The one function here, :func:`build_report`, is what ``segtool report``
calls; it writes the thumbnails as results come in (so memory holds only
each result's figures) and the page last, atomically.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from segtool import __version__
from segtool.batch import ItemResult, RunOptions, run_batch
from segtool.io import atomic_output, check_output_free
from segtool.outputs import OutputOptions
from segtool.report.collect import Entry
from segtool.report.flags import FLAG_ORDER, FlagOptions, flag_rows
from segtool.report.modelinfo import describe_model
from segtool.report.page import page_name, render_page
from segtool.report.stats import median_or_none
from segtool.report.svg import histogram_svg
from segtool.report.task import ReportTask

__all__ = ["ReportOptions", "ReportOutcome", "build_report", "thumbnail_shape"]


@dataclass(frozen=True)
class ReportOptions:
    """How the report is made.

    Attributes
    ----------
    size : int
        Longest side of a thumbnail (px).
    quality : int
        JPEG quality of the thumbnails.
    jobs : int
        Worker processes that read results and draw thumbnails.
    flags : FlagOptions
        Flag thresholds.
    title : str
        The page's heading.
    command : str or None
        The command line to show (default: this process's).
    page_size : int
        Results per HTML page (``index.html``, ``page-2.html``, ...): a
        browser builds a page of 1,000 cards several times faster than one
        of 10,000.
    """

    size: int = 128
    quality: int = 80
    jobs: int = 1
    flags: FlagOptions = field(default_factory=FlagOptions)
    title: str = "segtool report"
    command: str | None = None
    page_size: int = 1000


@dataclass
class ReportOutcome:
    """What :func:`build_report` did: the page, and the results it could not read (with their reasons)."""

    index: Path
    results: int
    flagged: int
    unreadable: list[tuple[str, str]]


def thumbnail_shape(shape: Sequence[int], size: int) -> tuple[int, int]:
    """(width, height) of the thumbnail of an image of ``shape`` (the last two axes are Y, X).

    Examples
    --------
    >>> thumbnail_shape([520, 696], 128)
    (116, 87)
    """
    h, w = int(shape[-2]), int(shape[-1])
    factor = max(1, -(-max(h, w) // size))
    return -(-w // factor), -(-h // factor)


def _url(target: Path, out_dir: Path) -> str:
    return quote(Path(os.path.relpath(target.resolve(), out_dir.resolve())).as_posix())


def _model_text(record: dict[str, Any], model: dict[str, Any] | None) -> str:
    if model is not None:
        bits = [f"model {model['name']}"]
        version = ", ".join(x for x in ((model.get("created") or "")[:10],
                                        f"segtool {model['segtool_version']}" if model.get("segtool_version") else "") if x)
        if version:
            bits.append(f"({version})")
        if model.get("error"):
            bits.append(f"(details unavailable: {model['error']})")
        return " ".join(bits)
    if "polarity" in record or "threshold" in record:
        threshold = record.get("threshold")
        return f"baseline, threshold {threshold:g}" if isinstance(threshold, (int, float)) else "baseline"
    return ""


def _row(entry: Entry, result: ItemResult | None, model: dict[str, Any] | None, out_dir: Path,
         size: int) -> dict[str, Any]:
    record = entry.record
    row: dict[str, Any] = {"name": Path(entry.input).name or entry.input, "input": entry.input,
                           "status": entry.status, "error": entry.error,
                           "empty_reason": record.get("empty_reason"),
                           "diameter": record.get("diameter"), "scale": record.get("scale"),
                           "model": None if model is None else model["name"],
                           "model_diameter": None if model is None else model.get("median_diameter"),
                           "model_text": _model_text(record, model)}
    if result is not None and result.status == "failed":
        row.update(status="failed", error=f"cannot read the result: {result.error}")
    elif result is not None:
        row.update({k: v for k, v in result.figures.items() if k != "image"})
        shape = tuple(result.figures.get("shape") or (size, size))
        stack = len(shape) == 3
        thumbs = [("thumb", "middle plane" if stack else "outlines"), ("thumb_max", "max projection")]
        row["thumbs"] = [(_url(Path(result.outputs[key]), out_dir), caption, thumbnail_shape(shape, size))
                         for key, caption in thumbs if key in result.outputs]
        if entry.image is None and result.figures.get("image"):
            entry.image = Path(result.figures["image"])
    links: list[tuple[str, str]] = []
    if entry.image is not None and entry.image.is_file():
        links.append(("image", _url(entry.image, out_dir)))
    # only files still there: a link on the page always opens something
    links.extend((name, _url(path, out_dir)) for name, path in entry.outputs.items() if path.is_file())
    row["links"] = links
    return row


def _rules(options: FlagOptions) -> list[str]:
    return [
        "failed: the run (or this report) could not process the input; its one-line error is shown",
        "no objects: the label image is empty",
        f"model size: the median object diameter, times the scale predict used, is over {options.model_ratio:g}x "
        "larger or smaller than the median diameter of the model's training objects",
        f"count / size: the object count or the median diameter has a robust z-score over {options.z_threshold:g} "
        "(0.6745 x distance from the run's median / median absolute deviation; needs "
        f"{options.min_run} results with objects)",
        f"saturated: over {100 * options.saturated:g}% of the image's pixels sit at its top value",
        f"border: at least {options.border_min} objects and over {100 * options.border_share:g}% of them touch "
        "the image's edge",
    ]


def build_report(
    entries: Sequence[Entry],
    out_dir: Path,
    *,
    image_spec: Path | None = None,
    options: ReportOptions = ReportOptions(),
    overwrite: bool = False,
    on_result: Callable[[ItemResult], None] | None = None,
    debug: bool = False,
    source: str | None = None,
) -> ReportOutcome:
    """Measure, draw and flag every entry, then write ``out_dir/index.html`` and ``out_dir/thumbs/``.

    Parameters
    ----------
    entries : sequence of Entry
        The run's results (:mod:`segtool.report.collect`).
    out_dir : Path
        The report's folder (created).
    image_spec : Path, optional
        ``--image``: the images of label files that a manifest does not name.
    options : ReportOptions, optional
    overwrite : bool, optional
        Replace an existing ``index.html``.
    on_result : callable, optional
        Called with each result's :class:`segtool.batch.ItemResult` as it is read (progress).
    debug : bool, optional
        Let unexpected errors raise with their traceback.
    source : str, optional
        Where the results came from (the manifest's path), shown on the page.

    Raises
    ------
    OutputError
        ``index.html`` exists and ``overwrite`` is false, or cannot be written.
    """
    out_dir = Path(out_dir)
    index = out_dir / "index.html"
    check_output_free(index, overwrite=overwrite)
    readable = [e for e in entries if e.status != "failed" and e.labels is not None]
    task = ReportTask(
        output=OutputOptions(out_dir, overwrite=True),  # thumbnails are always replaced; index.html follows --overwrite
        names={str(e.labels): f"{i:06d}" for i, e in enumerate(readable)},
        images={str(e.labels): str(e.image) for e in readable if e.image is not None},
        image_spec=image_spec, size=options.size, quality=options.quality,
    )
    results: dict[str, ItemResult] = {}

    def keep(result: ItemResult) -> None:
        results[result.input] = result
        if on_result is not None:
            on_result(result)

    run_batch([e.labels for e in readable], task, RunOptions(jobs=options.jobs, overwrite=True, debug=debug), on_result=keep)
    models = {spec: describe_model(spec) for spec in {str(e.record["model"]) for e in entries if e.record.get("model")}}
    rows = [_row(e, results.get(str(e.labels)) if e.labels is not None else None,
                 models.get(str(e.record.get("model"))) if e.record.get("model") else None, out_dir, options.size)
            for e in entries]
    for row, flags in zip(rows, flag_rows(rows, options=options.flags)):
        row["flags"] = flags
    rank = {kind: i for i, kind in enumerate(FLAG_ORDER)}
    order = sorted(range(len(rows)), key=lambda i: (0, rank[rows[i]["flags"][0].kind]) if rows[i]["flags"] else (1, 0))
    ordered = [rows[i] for i in order]
    summary = _summary(entries, rows, models, options, source)
    per_page = max(1, options.page_size)
    pages = max(1, -(-len(ordered) // per_page))
    # the other pages first: index.html, written last, only ever links pages that exist
    for number in [*range(2, pages + 1), 1]:
        first = (number - 1) * per_page
        text = render_page(ordered[first:first + per_page], summary, page=number, pages=pages, first=first,
                           total=len(ordered))
        with atomic_output(out_dir / page_name(number), overwrite=True if number > 1 else overwrite) as temp:
            temp.write_text(text, encoding="utf-8")
    unreadable = [(r.input, r.error or "failed") for r in results.values() if r.status == "failed"]
    return ReportOutcome(index=index, results=len(rows), flagged=sum(1 for r in rows if r["flags"]),
                         unreadable=unreadable)


def _summary(entries, rows, models, options: ReportOptions, source: str | None) -> dict[str, Any]:
    status = [e.status for e in entries]
    read = [r for r in rows if r["status"] != "failed"]
    counts = [("results", len(rows), ""), ("done", status.count("done"), ""),
              ("skipped", status.count("skipped"), ""), ("failed", status.count("failed"), "bad" if "failed" in status else ""),
              ("flagged", sum(1 for r in rows if r["flags"]), "warn")]
    unread = sum(1 for e, r in zip(entries, rows) if e.status != "failed" and r["status"] == "failed")
    if unread:
        counts.append(("unreadable now", unread, "bad"))
    command = options.command or shlex.join(["segtool", *sys.argv[1:]])
    run = [("report command", command), ("segtool", __version__)]
    if source:
        run.append(("results from", source))
    commands = sorted({str(e.record["command"]) for e in entries if e.record.get("command")})
    run.extend(("run command", c) for c in commands)
    for info in models.values():
        bits = [info.get("path") or info["name"]]
        if info.get("created"):
            bits.append(f"created {info['created']}")
        if info.get("segtool_version"):
            bits.append(f"segtool {info['segtool_version']}")
        if info.get("median_diameter"):
            bits.append(f"training median Ø {info['median_diameter']:.1f} px")
        if info.get("error"):
            bits.append(info["error"])
        run.append((f"model {info['name']}", ", ".join(bits)))
    trained = [m["median_diameter"] for m in models.values() if m.get("median_diameter")]
    marker = trained[0] if len(trained) == 1 else None
    sizes = [r["median_diameter"] for r in read if r.get("median_diameter") is not None]
    median_count = median_or_none([r.get("objects", 0) for r in read])
    plots = [
        histogram_svg([r.get("objects", 0) for r in read], title=f"objects per image (median {median_count or 0:g})",
                      xlabel="objects", width=300, height=150),
        histogram_svg(sizes, title="median object diameter per image", xlabel="px", marker=marker,
                      marker_label="model" if marker else "", width=300, height=150),
    ]
    return {"title": options.title, "counts": counts, "run": run, "plots": plots, "rules": _rules(options.flags)}
