"""``segtool evaluate``: instance metrics of predicted label images against ground truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from segtool.batch import EXIT_USAGE, ItemResult, RunOptions, run_batch
from segtool.cli.application import app
from segtool.cli.messages import fail, print_error, stderr
from segtool.cli.options import Debug, MaxMemory, Overwrite, Quiet, Recursive, ShardOpt, memory_budget
from segtool.cli.reporter import Reporter, progress_bar
from segtool.cli.specs import shard_files
from segtool.errors import InputError, SegtoolError, first_line
from segtool.inputs import expand_inputs
from segtool.io import check_output_free
from segtool.metrics import DEFAULT_THRESHOLDS, MatchCounts
from segtool.memory import MemoryBudget
from segtool.pairing import LabelPair, pair_label_files
from segtool.plotting import require_plotting
from segtool.quiet import quiet_libraries
from segtool.tasks.evaluate import EvaluateTask

PANEL_OUT = "Outputs"
PANEL_METRIC = "Metric"


def parse_thresholds(text: str | None) -> tuple[float, ...]:
    """``--thresholds``: comma-separated values, or ``start:stop:step`` (stop included).

    Examples
    --------
    >>> parse_thresholds("0.5,0.75")
    (0.5, 0.75)
    >>> parse_thresholds("0.5:0.7:0.1")
    (0.5, 0.6, 0.7)
    """
    if text is None or not text.strip():
        return DEFAULT_THRESHOLDS
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(np.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + k * step, 10) for k in range(count)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--thresholds must be numbers like 0.5,0.75 or a range like 0.5:0.95:0.05, got {text!r}") from None
    bad = [v for v in values if not 0 < v <= 1]
    if not values or bad:
        raise InputError(f"--thresholds must lie in (0, 1], got {text!r}")
    return tuple(values)


def _pixel_totals(pixels: list[dict[str, Any]]) -> dict[str, float | int]:
    true = sum(p["true_pixels"] for p in pixels)
    pred = sum(p["pred_pixels"] for p in pixels)
    inter = sum(p["intersection"] for p in pixels)
    total = true + pred
    return {
        "dice": 2.0 * inter / total if total else 1.0,
        "iou": inter / (total - inter) if total else 1.0,
        "true_pixels": true,
        "pred_pixels": pred,
        "intersection": inter,
    }


def _report(pair: LabelPair | None, counts: MatchCounts, pixels: dict[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    if pair is not None:
        record.update({"name": pair.name, "pred": str(pair.pred), "gt": str(pair.gt)})
    record.update(
        {
            "n_true": counts.n_true,
            "n_pred": counts.n_pred,
            "ap_mean": float(counts.ap.mean()),
            "pixel_dice": pixels["dice"],
            "pixel_iou": pixels["iou"],
            "per_threshold": counts.to_rows(),
        }
    )
    return record


def _print_tables(console: Console, images: list[dict[str, Any]], total: dict[str, Any], thresholds) -> None:
    first = thresholds[0]
    per_image = Table(title="per image", title_justify="left", box=None, header_style="bold", pad_edge=False)
    for header in ("image", "true", "pred", f"F1@{first:g}", f"AP@{first:g}", "AP mean", "pixel Dice"):
        per_image.add_column(header, justify="left" if header == "image" else "right", overflow="fold")
    for record in images:
        row0 = record["per_threshold"][0]
        per_image.add_row(
            record["name"],
            str(record["n_true"]),
            str(record["n_pred"]),
            f"{row0['f1']:.3f}",
            f"{row0['ap']:.3f}",
            f"{record['ap_mean']:.3f}",
            f"{record['pixel_dice']:.3f}",
        )
    console.print(per_image)
    console.print()
    title = (
        f"dataset: {total['n_images']} image(s), {total['n_true']} true / {total['n_pred']} predicted objects "
        f"(from summed counts); pixel Dice {total['pixel_dice']:.3f}, IoU {total['pixel_iou']:.3f}"
    )
    table = Table(title=title, title_justify="left", box=None, header_style="bold", pad_edge=False)
    for header in ("IoU", "TP", "FP", "FN", "precision", "recall", "F1", "AP", "mean IoU", "PQ"):
        table.add_column(header, justify="right")
    for row in total["per_threshold"]:
        table.add_row(
            f"{row['threshold']:.2f}",
            str(row["tp"]),
            str(row["fp"]),
            str(row["fn"]),
            *(f"{row[k]:.3f}" for k in ("precision", "recall", "f1", "ap", "mean_matched_iou", "panoptic_quality")),
        )
    console.print(table)
    console.print(f"AP mean over thresholds {total['ap_mean']:.3f}; mean over images (DSB 2018 score) {total['mean_image_ap']:.3f}")


def _csv_rows(images: list[dict[str, Any]], total: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for scope, record in [*(("image", r) for r in images), ("dataset", total)]:
        for row in record["per_threshold"]:
            rows.append(
                {
                    "scope": scope,
                    "name": record.get("name", ""),
                    "pred": record.get("pred", ""),
                    "gt": record.get("gt", ""),
                    **row,
                    "pixel_dice": record["pixel_dice"],
                    "pixel_iou": record["pixel_iou"],
                }
            )
    return rows


CSV_COLUMNS = (
    "scope", "name", "pred", "gt", "threshold", "n_true", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1", "ap",
    "mean_matched_iou", "panoptic_quality", "pixel_dice", "pixel_iou",
)  # fmt: skip


@app.command(rich_help_panel="Export and evaluate")
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Predicted label image, or a folder of them.", show_default=False)],
    gt: Annotated[Path, typer.Argument(help="Ground-truth label image, or a folder of them (paired by name stem).", show_default=False)],
    thresholds: Annotated[
        Optional[str],
        typer.Option(
            "--thresholds",
            "-t",
            help="IoU thresholds: comma-separated (0.5,0.75) or start:stop:step (0.5:0.95:0.05, the default).",
            rich_help_panel=PANEL_METRIC,
        ),
    ] = None,
    csv_path: Annotated[
        Optional[Path],
        typer.Option("--csv", help="Write scores per image and per threshold (and dataset totals) to this CSV file.", rich_help_panel=PANEL_OUT, dir_okay=False),
    ] = None,
    plot: Annotated[
        Optional[Path],
        typer.Option("--plot", help="Save a PNG of dataset AP, F1, precision and recall against IoU threshold.", rich_help_panel=PANEL_OUT, dir_okay=False),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print all results as one JSON document on stdout (no table).", rich_help_panel=PANEL_OUT)] = False,
    recursive: Recursive = False,
    overwrite: Overwrite = False,
    max_memory: MaxMemory = None,
    shard: ShardOpt = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Score predicted objects against ground truth: TP/FP/FN, precision, recall, F1, AP, PQ per IoU threshold.

    Objects are matched one-to-one by IoU (optimal assignment); a match counts when IoU >= threshold. AP is
    TP / (TP + FP + FN) as in the 2018 Data Science Bowl and StarDist. Dataset totals come from counts summed
    over all images. Also reports foreground (pixel) Dice and IoU.
    """
    try:
        values = parse_thresholds(thresholds)
    except InputError as err:
        fail(str(err), code=EXIT_USAGE)
    _check_outputs(csv_path, plot, overwrite=overwrite)
    memory = memory_budget(max_memory, "evaluate", way_out="raise --max-memory if this machine has the memory")
    pairs, found, failed = _find_pairs(pred, gt, recursive=recursive, shard=shard)
    scored, unreadable = _score_pairs(pairs, values, memory, quiet=quiet, debug=debug)
    failed += unreadable

    err_console = stderr()
    note = f"shard {shard} ({len(pairs)} of {found} pairs): " if shard is not None else ""
    if not scored and shard is not None and found and not failed and not pairs:  # an empty shard: nothing to do
        if not quiet:
            err_console.print(f"segtool: {note}nothing to evaluate", markup=False, highlight=False)
        raise typer.Exit(0)
    if not scored:
        fail("nothing to evaluate: no prediction could be paired with its ground truth and read")
    images = [_report(pair, counts, pixels) for pair, counts, pixels in scored]
    total_counts = sum(counts for _, counts, _ in scored)
    total = _report(None, total_counts, _pixel_totals([pixels for _, _, pixels in scored]))
    total = {"n_images": len(images), **total, "mean_image_ap": float(np.mean([r["ap_mean"] for r in images]))}
    outputs, unwritten = _write_outputs(csv_path, plot, images, total, total_counts, overwrite=overwrite)
    failed += unwritten

    if json_out:
        document = {"thresholds": list(values), "total": total, "images": images, "failed": failed, "outputs": outputs}
        if shard is not None:
            document["shard"] = str(shard)
        print(json.dumps(document))
    else:
        _print_tables(Console(highlight=False, soft_wrap=True), images, total, values)
        if not quiet:
            for name, path in outputs.items():
                err_console.print(f"segtool: wrote {name}: {path}", markup=False, highlight=False)
    if not quiet:
        err_console.print(
            f"segtool: {note}{len(images)} pair(s) evaluated, {failed} problem(s)", markup=False, highlight=False
        )
    raise typer.Exit(1 if failed else 0)


def _check_outputs(csv_path: Path | None, plot: Path | None, *, overwrite: bool) -> None:
    """Exit before any work when ``--plot`` lacks matplotlib (2) or an output exists without ``--overwrite`` (1)."""
    if plot is not None:
        try:  # matplotlib is the optional [plot] extra: say so before any work
            require_plotting("--plot")
        except SegtoolError as err:
            fail(first_line(err), code=EXIT_USAGE)
    for target in (csv_path, plot):
        if target is not None:
            try:
                check_output_free(target, overwrite=overwrite)
            except SegtoolError as err:
                fail(first_line(err))


def _find_pairs(pred: Path, gt: Path, *, recursive: bool, shard) -> tuple[list[LabelPair], int, int]:
    """The pairs this process scores (its ``--shard``), how many pairs there are, and how many problems were reported.

    Each file that cannot be paired gets its error line; exit 1 when ``pred``
    or ``gt`` does not exist.
    """
    failed = 0
    files = {}
    for side, spec in (("pred", pred), ("gt", gt)):
        if not spec.exists():
            print_error(str(spec), "no such file or folder")
            failed += 1
            continue
        expanded = expand_inputs([str(spec)], recursive=recursive, kind="labels")
        for where, message in expanded.problems:
            print_error(where, message)
            failed += 1
        files[side] = expanded.files
    if len(files) < 2:
        raise typer.Exit(1)
    pairs, problems = pair_label_files(files["pred"], files["gt"])
    found = len(pairs)
    if shard is not None:  # split by prediction file; each shard's totals cover its own pairs only
        kept = set(shard_files([p.pred for p in pairs], [str(pred)], shard))
        pairs = [p for p in pairs if p.pred in kept]
    for where, message in problems:
        print_error(where, message)
        failed += 1
    return pairs, found, failed


def _score_pairs(pairs: list[LabelPair], thresholds: tuple[float, ...], memory: MemoryBudget, *, quiet: bool,
                 debug: bool) -> tuple[list[tuple[LabelPair, MatchCounts, dict[str, Any]]], int]:
    """Score every pair with the shared batch runner; returns (pair, counts, pixel scores) of those read, and the
    number that failed (each reported on stderr as it happens)."""
    by_pred = {pair.pred: pair for pair in pairs}

    def where(result: ItemResult) -> str | None:
        # the task's messages start with their file (the prediction or its ground truth); the runner's own do not
        pair = by_pred[Path(result.input)]
        return None if (result.error or "").startswith((f"{pair.pred}: ", f"{pair.gt}: ")) else result.input

    progress = progress_bar(stderr(), quiet=quiet)
    emit = Reporter(progress, paths_out=False, where=where)
    with progress, quiet_libraries(debug):
        emit.task_id = progress.add_task("evaluate", total=len(pairs))
        summary = run_batch(list(by_pred), EvaluateTask(by_pred, thresholds, memory), RunOptions(debug=debug),
                            on_result=emit)
    scored = [(by_pred[Path(r.input)], r.figures["counts"], r.figures["pixels"])
              for r in summary.results if r.status == "done"]
    return scored, summary.failed


def _write_outputs(csv_path: Path | None, plot: Path | None, images: list[dict[str, Any]], total: dict[str, Any],
                   total_counts: MatchCounts, *, overwrite: bool) -> tuple[dict[str, str], int]:
    """Write ``--csv`` and ``--plot``; returns the files written, by kind, and 1 when one could not be (said on
    stderr), else 0."""
    from segtool import export as writers

    outputs: dict[str, str] = {}
    try:
        if csv_path is not None:
            outputs["csv"] = str(writers.write_csv(csv_path, _csv_rows(images, total), columns=CSV_COLUMNS,
                                                   overwrite=overwrite))
        if plot is not None:
            curves = {
                "AP": total_counts.ap,
                "F1": total_counts.f1,
                "precision": total_counts.precision,
                "recall": total_counts.recall,
            }
            title = f"{len(images)} image(s), {total_counts.n_true} true objects"
            outputs["plot"] = str(writers.write_score_plot(plot, total_counts.thresholds, curves, title=title,
                                                           overwrite=overwrite))
    except SegtoolError as err:
        print_error(None, first_line(err))
        return outputs, 1
    return outputs, 0
