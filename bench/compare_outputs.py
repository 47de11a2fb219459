"""Are two installs of segtool byte-identical on real commands?

Runs the same commands with two checkouts (each put first on ``PYTHONPATH``)
and compares every file they write, byte for byte:

* ``baseline`` on the images (labels only, then with ``--save-background
  --save-corrected --save-overlay``);
* ``predict`` with the shipped model on the CPU (labels only, then with
  ``--save-prob --save-overlay``);
* ``export`` of the baseline and predict labels to every format, with the
  images for intensity columns and overlays;
* ``evaluate`` of the baseline and predict labels against the masks (the
  ``--json`` document and the ``--csv`` file).

A refactor that claims to change no behaviour should report ``identical``.
Messages go to stderr; stdout gets one line per compared file that differs
and a final verdict. Exit code 0 when every file is identical, 1 otherwise.

Run::

    git worktree add /tmp/ref <commit>
    python bench/compare_outputs.py --a /tmp/ref --b . [--data FOLDER]

``--data`` adds a folder of images (``baseline``, ``predict`` and ``export``
run on it too; no ground truth needed). Not run by pytest.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FORMATS = "labels,binary,png,imagej-roi,geojson,csv"


def _commands(images: Path, masks: Path | None, model: Path, tag: str) -> list[tuple[list[str], Path | None]]:
    """(segtool arguments, file to receive stdout or None) for one input folder.

    Paths are relative to the side's own output folder (the working directory
    of the commands), so paths written into outputs (evaluate's JSON and CSV)
    read the same on both sides.
    """
    out = Path(".")
    seg = out / f"{tag}_baseline"
    pred = out / f"{tag}_predict"
    cmds: list[tuple[list[str], Path | None]] = [
        (["baseline", str(images), "-o", str(seg), "-q"], None),
        (["baseline", str(images), "-o", str(out / f"{tag}_baseline_extras"), "-q",
          "--save-background", "--save-corrected", "--save-overlay"], None),
        (["predict", str(images), "-m", str(model), "--device", "cpu", "-o", str(pred), "-q"], None),
        (["predict", str(images), "-m", str(model), "--device", "cpu", "-o", str(out / f"{tag}_predict_extras"),
          "-q", "--save-prob", "--save-overlay"], None),
    ]
    for name, labels in (("baseline", seg), ("predict", pred)):
        cmds.append((["export", str(labels), "-f", FORMATS, "--image", str(images),
                      "-o", str(out / f"{tag}_export_{name}"), "-q"], None))
        if masks is not None:
            csv = out / f"{tag}_evaluate_{name}.csv"
            cmds.append((["evaluate", str(labels), str(masks), "--csv", str(csv), "--json", "-q"],
                         out / f"{tag}_evaluate_{name}.json"))
    return cmds


def _run_side(checkout: Path, python: str, cmds, out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(checkout.resolve()), CI="true")
    out.mkdir(parents=True, exist_ok=True)
    for args, stdout_file in cmds:
        print(f"[{checkout}] segtool {' '.join(args)}", file=sys.stderr)
        proc = subprocess.run([python, "-m", "segtool", *args], env=env, cwd=out, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}) with {checkout}: segtool {' '.join(args)}\n{proc.stderr}")
        if stdout_file is not None:
            (out / stdout_file).write_text(proc.stdout)


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


def compare(a_dir: Path, b_dir: Path) -> list[str]:
    """Relative paths that differ (missing on one side, or different bytes)."""
    a_files, b_files = _files(a_dir), _files(b_dir)
    problems = [f"only in A: {p}" for p in sorted(a_files - b_files)]
    problems += [f"only in B: {p}" for p in sorted(b_files - a_files)]
    problems += [
        f"differs: {p}" for p in sorted(a_files & b_files) if not filecmp.cmp(a_dir / p, b_dir / p, shallow=False)
    ]
    return problems


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="checkout A (the reference)")
    parser.add_argument("--b", type=Path, required=True, help="checkout B (the change)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with segtool's dependencies")
    parser.add_argument("--images", type=Path, default=here / "sample_data" / "images")
    parser.add_argument("--masks", type=Path, default=here / "sample_data" / "masks")
    parser.add_argument("--model", type=Path, default=here / "segtool" / "models" / "nuclei.pt")
    parser.add_argument("--data", type=Path, help="an extra folder of images (no ground truth)")
    parser.add_argument("--work", type=Path, help="keep the outputs in this folder (default: a temporary one)")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="segtool-compare-"))
    # Inputs are copied once so that both sides read the same files by the same relative names.
    inputs = work / "inputs"
    shutil.copytree(args.images, inputs / "sample", dirs_exist_ok=True)
    masks = inputs / "sample_masks"
    shutil.copytree(args.masks, masks, dirs_exist_ok=True)
    sets = [(Path("../inputs/sample"), Path("../inputs/sample_masks"), "sample")]
    if args.data is not None:
        shutil.copytree(args.data, inputs / "data", dirs_exist_ok=True)
        sets.append((Path("../inputs/data"), None, "data"))
    sides = {}
    for label, checkout in (("a", args.a), ("b", args.b)):
        out = work / label
        if out.exists():
            shutil.rmtree(out)
        cmds = [cmd for images, gt, tag in sets for cmd in _commands(images, gt, args.model.resolve(), tag)]
        _run_side(checkout, args.python, cmds, out)
        sides[label] = out

    problems = compare(sides["a"], sides["b"])
    count = len(_files(sides["a"]))
    for line in problems:
        print(line)
    if problems:
        print(f"DIFFERENT: {len(problems)} problem(s) among {count} files (outputs in {work})")
        return 1
    print(f"identical: {count} files byte-identical between {args.a} and {args.b} (outputs in {work})")
    if args.work is None:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
