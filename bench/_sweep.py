"""Shared harness of the sweeps (``sweep_scale.py``, ``sweep_appearance.py``): transform a test split, predict it
with ``segtool predict`` as a user would, score it as ``segtool evaluate`` does, print one row per condition.

A condition is a name and a pure function ``(image, labels, rng) -> (image, labels)``. Its transformed images and
masks are written once into a cache folder (``runs/sweeps/<data>/<condition>/``, git-ignored) and reused by later
runs, so a rerun after a change to segtool costs only the predictions. The prediction is the ``segtool predict``
command itself, in a child process, with no options but ``--json``, the output folder and those passed in
(``--model``, ``--threads``, ``--predict-args``): the sweep measures whatever predict does by default. Scores are
``segtool.metrics.match_labels`` counts summed over the images, the dataset total ``segtool evaluate`` prints.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from segtool.metrics import match_labels

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (a worktree may sit a level deeper)
SHARED_DATA = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()),
                   ROOT.parent / "shared" / "data")
DEFAULT_DATA = SHARED_DATA / "dsb2018_fluo" / "test"
DEFAULT_CACHE = ROOT / "runs" / "sweeps"
THRESHOLDS = (0.5, 0.7)
#: Name of the untouched split's row; every other row is compared with it.
REFERENCE = "untouched"

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Condition:
    """One row of a sweep: a name, the transform of an (image, labels) pair, and the values that define it.

    ``params`` is stored beside the cached files; a cache made with other values is rebuilt.
    """

    name: str
    transform: Transform
    params: dict = field(default_factory=dict)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to ``shape`` (pixel centres mapped back): ids are kept, none made.

    Examples
    --------
    >>> resize_labels(np.array([[1, 2], [3, 0]], np.uint16), (4, 4))
    array([[1, 1, 2, 2],
           [1, 1, 2, 2],
           [3, 3, 0, 0],
           [3, 3, 0, 0]], dtype=uint16)
    """
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.intp), labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.intp), labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a (H, W) or (H, W, C) image: linear interpolation, low-pass filtered first when shrinking (so a
    smaller image averages its pixels, as a coarser sensor would); the dtype is kept (integers rounded, clipped).

    Examples
    --------
    >>> resize_image(np.full((4, 6), 7, np.uint8), (2, 3))
    array([[7, 7, 7],
           [7, 7, 7]], dtype=uint8)
    """
    from skimage.transform import resize

    shrinking = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    out = resize(image.astype(np.float64), tuple(shape) + image.shape[2:], order=1, mode="reflect",
                 anti_aliasing=shrinking, preserve_range=True)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(image.dtype)


def scaled_shape(shape: Sequence[int], factor: float) -> tuple[int, int]:
    """(H, W) of an image of ``shape`` resized by ``factor`` (at least 1 x 1).

    Examples
    --------
    >>> scaled_shape((256, 320, 3), 0.4)
    (102, 128)
    """
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def scale_condition(factor: float) -> Condition:
    """The condition that resizes image and labels by ``factor`` (labels by nearest neighbour)."""

    def transform(image, labels, rng):
        shape = scaled_shape(image.shape, factor)
        return resize_image(image, shape), resize_labels(labels, shape)

    return Condition(f"scale {factor:g}", transform, {"factor": float(factor)})


def median_diameter(masks: Sequence[np.ndarray]) -> float:
    """Median equivalent-circle diameter of the objects of ``masks``, pixels (the model file's ``median_diameter``).

    Examples
    --------
    >>> round(median_diameter([np.pad(np.ones((10, 10), np.uint16), 2)]), 2)
    11.28
    """
    areas = []
    for labels in masks:
        counts = np.bincount(np.asarray(labels).ravel())[1:]
        areas.append(counts[counts > 0])
    areas = np.concatenate(areas) if areas else np.zeros(0)
    return float(np.median(np.sqrt(4.0 * areas / np.pi))) if areas.size else float("nan")


# ---------------------------------------------------------------------------------------------- files and cache


def list_split(data: Path, limit: int | None = None) -> list[str]:
    """File names of ``data/images`` that have a mask in ``data/masks`` (sorted; the first ``limit``)."""
    images, masks = data / "images", data / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise SystemExit(f"{data}: needs images/ and masks/ folders")
    names = sorted(p.name for p in images.iterdir() if p.suffix.lower() in (".tif", ".tiff") and (masks / p.name).is_file())
    if not names:
        raise SystemExit(f"{data}: no image with a mask of the same name")
    return names[:limit] if limit else names


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text).strip("_")


def _write_tiff(path: Path, array: np.ndarray) -> None:
    part = path.with_name(path.name + ".part")
    rgb = array.ndim == 3 and array.shape[-1] in (3, 4)
    tifffile.imwrite(part, array, photometric="rgb" if rgb else None, compression="zlib")
    os.replace(part, path)  # a killed run leaves no half-written file that a rerun would take for done


def prepare(condition: Condition, data: Path, names: Sequence[str], cache: Path, *, seed: int = 0) -> Path:
    """Folder with ``images/`` and ``masks/`` of ``names`` under ``condition``; made once, reused while its
    source, condition values and seed stay the same. The untouched split is ``data`` itself."""
    if condition.name == REFERENCE:
        return data
    folder = cache / _slug(f"{data.parent.name}-{data.name}") / _slug(condition.name)
    stamp = {"source": str(data.resolve()), "condition": condition.name, "params": condition.params, "seed": seed}
    stamp_path = folder / "condition.json"
    if folder.exists() and (not stamp_path.is_file() or json.loads(stamp_path.read_text()) != stamp):
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(json.dumps(stamp, indent=1))
    for name in names:
        if (folder / "images" / name).is_file() and (folder / "masks" / name).is_file():
            continue
        # one generator per image, from the seed, the condition and the file name: the same pixels on every rerun
        key = [seed, *(ord(c) for c in f"{condition.name}/{name}")]
        image, labels = condition.transform(tifffile.imread(data / "images" / name), tifffile.imread(data / "masks" / name),
                                            np.random.default_rng(key))
        _write_tiff(folder / "masks" / name, labels)
        _write_tiff(folder / "images" / name, image)
    return folder


# ---------------------------------------------------------------------------------------------- predict and score


@dataclass
class Row:
    """Scores and costs of one condition."""

    condition: str
    params: dict
    images: int
    n_true: int
    n_pred: int
    ap: dict  # threshold -> AP (TP / (TP + FP + FN)) from summed counts
    f1: dict
    seconds: float
    peak_rss_mib: float
    failed: int
    predict_args: list
    reported: dict  # median of what predict's --json reports per image (scale, diameter), where it does
    per_image: list = field(default_factory=list)  # name, true/predicted/matched@0.5 objects, predict's size figures


def run_predict(paths: Sequence[Path], out: Path, args: Sequence[str]) -> tuple[list[dict], float, float, int]:
    """``segtool predict PATHS -o OUT --json ARGS`` in a child process (this worktree's segtool).

    Returns the per-image JSON records, wall seconds, the child's peak resident memory (MiB) and its exit code.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "segtool", "predict", *map(str, paths), "-o", str(out), "--json", "--overwrite", *args]
    out.mkdir(parents=True, exist_ok=True)
    log, errors = out / "predict.jsonl", out / "predict.stderr"
    start = time.perf_counter()
    with open(log, "w") as stdout, open(errors, "w") as stderr:
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
        # wait4, not wait: the child's own peak resident memory comes with its exit status
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    peak_mib = usage.ru_maxrss / 1024.0  # kilobytes on Linux
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    if code and not records:
        raise SystemExit(f"segtool predict failed ({code}): {shlex.join(command[:6])} ...\n{errors.read_text().strip()}")
    return records, seconds, peak_mib, code


def median_reported(records: Sequence[dict]) -> dict:
    """Median of the numbers predict reports per image under ``scale`` or ``diameter`` (top level, or one level
    down, wherever predict's ``--json`` puts them)."""
    out = {}
    for key in ("scale", "diameter"):
        values = []
        for record in records:
            for place in (record, *(v for v in record.values() if isinstance(v, dict))):
                if isinstance(place.get(key), (int, float)) and not isinstance(place.get(key), bool):
                    values.append(place[key])
                    break
        if values:
            out[key] = float(np.median(values))
    return out


def score(folder: Path, names: Sequence[str], records: Sequence[dict]) -> tuple[int, int, dict, dict, int, list]:
    """Summed ``match_labels`` counts of predict's outputs against ``folder/masks``: n_true, n_pred, AP and F1 per
    threshold, images that failed (counted as all objects missed), and one small record per image."""
    by_name = {Path(r["input"]).name: r for r in records if "input" in r}
    total = None
    failed = 0
    per_image = []
    for name in names:
        truth = tifffile.imread(folder / "masks" / name)
        record = by_name.get(name, {})
        labels_path = record.get("outputs", {}).get("labels") if record.get("status") == "done" else None
        if labels_path:
            pred = tifffile.imread(labels_path)
        else:
            failed += 1
            pred = np.zeros_like(truth)
        counts = match_labels(truth, pred, thresholds=THRESHOLDS)
        total = counts if total is None else total + counts
        per_image.append({"name": name, "n_true": int(counts.n_true), "n_pred": int(counts.n_pred),
                          "tp@0.5": int(counts.tp[0]), "status": record.get("status"),
                          **{k: record[k] for k in ("scale", "diameter", "diameter_source", "bands") if k in record}})
    ap = {f"{t:g}": float(v) for t, v in zip(THRESHOLDS, total.ap)}
    f1 = {f"{t:g}": float(v) for t, v in zip(THRESHOLDS, total.f1)}
    return int(total.n_true), int(total.n_pred), ap, f1, failed, per_image


def run_condition(condition: Condition, data: Path, names: Sequence[str], cache: Path, predict_args: Sequence[str],
                  *, oracle_diameter: bool = False, keep: bool = False, seed: int = 0) -> Row:
    """Prepare, predict and score one condition."""
    folder = prepare(condition, data, names, cache, seed=seed)
    args = list(predict_args)
    if oracle_diameter:
        diameter = median_diameter([tifffile.imread(folder / "masks" / n) for n in names])
        args += ["--diameter", f"{diameter:.2f}"]
    out = cache / "predictions" / _slug(f"{data.parent.name}-{data.name}") / _slug(condition.name)
    records, seconds, peak, _ = run_predict([folder / "images" / n for n in names], out, args)
    n_true, n_pred, ap, f1, failed, per_image = score(folder, names, records)
    for record in records:
        if record.get("status") not in ("done", None):  # say why an image scored as all missed
            print(f"[sweep] {condition.name}: {Path(record.get('input', '?')).name}: {record.get('error')}",
                  file=sys.stderr)
    banded = [r for r in records if r.get("bands")]
    if banded:  # band mode (images over 16 Mpixel) may predict at another scale than the rest
        print(f"[sweep] {condition.name}: {len(banded)} image(s) predicted in bands", file=sys.stderr)
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    return Row(condition.name, condition.params, len(names), n_true, n_pred, ap, f1, round(seconds, 1), round(peak),
               failed, args, median_reported(records), per_image)


# ---------------------------------------------------------------------------------------------- the command line


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every sweep takes."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="split folder with images/ and masks/ "
                        "(default: ../shared/data/dsb2018_fluo/test)")
    parser.add_argument("-m", "--model", help="passed to segtool predict --model (default: predict's default)")
    parser.add_argument("--threads", type=int, help="passed to segtool predict --threads")
    parser.add_argument("--predict-args", default="", help='more segtool predict options, one string: "--diameter 21" '
                        '(a single option needs the = form: --predict-args=--no-bands)')
    parser.add_argument("--oracle-diameter", action="store_true", help="add --diameter D to each condition's predict, "
                        "D the median equivalent diameter of its true objects (the right size, given by hand)")
    parser.add_argument("--limit", type=int, help="only the first N images (sorted by name), for a quick check")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="folder of transformed images (default: runs/sweeps)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random transforms")
    parser.add_argument("--keep", action="store_true", help="keep the predicted labels under CACHE/predictions/")
    parser.add_argument("--json", dest="json_path", help="also write all rows as JSON to this file ('-': stdout, no table)")


def predict_arguments(args: argparse.Namespace) -> list[str]:
    """The options handed to every ``segtool predict`` of the sweep."""
    out = []
    if args.model:
        out += ["--model", args.model]
    if args.threads:
        out += ["--threads", str(args.threads)]
    return out + shlex.split(args.predict_args)


def run_sweep(conditions: Sequence[Condition], args: argparse.Namespace, title: str) -> list[Row]:
    """Run ``conditions`` (the untouched split first) and print the table (and the JSON document)."""
    names = list_split(args.data, args.limit)
    predict_args = predict_arguments(args)
    rows = []
    for condition in conditions:
        row = run_condition(condition, args.data, names, args.cache, predict_args,
                            oracle_diameter=args.oracle_diameter, keep=args.keep, seed=args.seed)
        print(f"[sweep] {row.condition}: AP@0.5 {row.ap['0.5']:.3f} AP@0.7 {row.ap['0.7']:.3f}, "
              f"{row.n_pred} objects for {row.n_true}, {row.seconds:.0f} s", file=sys.stderr, flush=True)
        rows.append(row)
    document = {"title": title, "data": str(args.data), "images": len(names), "predict_args": predict_args,
                "oracle_diameter": args.oracle_diameter, "rows": [row.__dict__ for row in rows]}
    if args.json_path == "-":
        print(json.dumps(document, indent=1))
        return rows
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(document, indent=1) + "\n")
    print(format_table(rows, title=f"{title}: {args.data} ({len(names)} images), segtool predict "
                                   f"{shlex.join(predict_args) or '(defaults)'}"
                                   f"{' + --diameter from the true objects' if args.oracle_diameter else ''}"))
    return rows


def format_table(rows: Sequence[Row], *, title: str = "") -> str:
    """A Markdown table: one row per condition, AP and its difference from the untouched split's row."""
    reference = next((r for r in rows if r.condition == REFERENCE), None)
    reported = sorted({key for r in rows for key in r.reported})
    header = ["condition", "AP@0.5", "AP@0.7", "ΔAP@0.5", "ΔAP@0.7", "objects (true)",
              *(f"median {k}" for k in reported), "predict s", "peak MiB"]
    lines = [title, "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)] if title else []
    if not title:
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for r in rows:
        deltas = ["", ""] if reference is None or r is reference else [
            f"{r.ap[t] - reference.ap[t]:+.3f}" for t in ("0.5", "0.7")]
        failed = f" ({r.failed} failed)" if r.failed else ""
        cells = [r.condition + failed, f"{r.ap['0.5']:.3f}", f"{r.ap['0.7']:.3f}", *deltas, f"{r.n_pred} ({r.n_true})",
                 *(f"{r.reported[k]:.3g}" if k in r.reported else "" for k in reported), f"{r.seconds:.0f}",
                 f"{r.peak_rss_mib:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
