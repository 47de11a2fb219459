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
  ``--json`` document and the ``--csv`` file), and ``measure`` of them (the
  per-image tables and the ``--summary`` rows);
* band mode: ``predict --bands`` (with ``--save-prob --save-overlay``) on a
  2048 x 2048 mosaic of the sample images, and ``export`` of its labels;
* Dask block mode (needs ``[distributed]``): ``predict --block-size 1024
  --overlap 0.25`` and ``baseline --block-size 1024`` (BigTIFF and
  ``--zarr``) on the same mosaic, on a local cluster;
* Z stacks: ``baseline`` (``--split``, and with the extra outputs) and
  ``predict`` (``--z-mode watershed`` and ``stitch``) on a synthetic
  16 x 128 x 128 stack, then ``export``, ``measure`` and ``evaluate`` of the
  label stacks against the stack's own labels.

The mosaic and the stack are written once, by checkout A's code, so both
sides read the same bytes. ``--sample-only`` leaves out the mosaic and the
stack (a quicker loop). The whole comparison takes a few minutes on two cores.

A refactor that claims to change no behaviour should report ``identical``.
Messages go to stderr; stdout gets one line per compared file that differs
and a final verdict. Exit code 0 when every file is identical, 1 otherwise.

Run::

    git worktree add /tmp/ref <commit>
    python bench/compare_outputs.py --a /tmp/ref --b . [--data FOLDER] [--sample-only]

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
import textwrap
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
        cmds += _measure(labels, images, out / f"{tag}_measure_{name}")
    return cmds


def _measure(labels: Path, images: Path, folder: Path) -> list[tuple[list[str], Path | None]]:
    """``measure`` of a folder of labels: the per-image tables, and the ``--summary`` rows on stdout."""
    return [
        (["measure", str(labels), "--image", str(images), "-o", str(folder), "-q"], None),
        (["measure", str(labels), "--image", str(images), "--summary", "-q"], Path(f"{folder}_summary.csv")),
    ]


def _large_commands(mosaic: Path, model: Path) -> list[tuple[list[str], Path | None]]:
    """Band mode and Dask block mode on the mosaic (one image, so each command writes one set of files)."""
    out = Path(".")
    bands = out / "large_bands"
    return [
        (["predict", str(mosaic), "-m", str(model), "--device", "cpu", "--bands", "-o", str(bands), "-q",
          "--save-prob", "--save-overlay"], None),
        (["export", str(bands), "-f", FORMATS, "--image", str(mosaic), "-o", str(out / "large_export_bands"), "-q"],
         None),
        (["predict", str(mosaic), "-m", str(model), "--device", "cpu", "--block-size", "1024", "--overlap", "0.25",
          "-o", str(out / "large_blocks_predict"), "-q"], None),
        (["baseline", str(mosaic), "--block-size", "1024", "-o", str(out / "large_blocks_baseline"), "-q"], None),
        (["baseline", str(mosaic), "--block-size", "1024", "--zarr", "-o", str(out / "large_blocks_baseline_zarr"),
          "-q"], None),
    ]


def _stack_commands(stack: Path, truth: Path, model: Path) -> list[tuple[list[str], Path | None]]:
    """Z-stack commands: 3-D baseline and predict, then export, measure and evaluate of the label stacks."""
    out = Path(".")
    folder = stack.parent
    seg, pred, stitch = out / "stack_baseline", out / "stack_predict", out / "stack_predict_stitch"
    cmds: list[tuple[list[str], Path | None]] = [
        (["baseline", str(stack), "--split", "-o", str(seg), "-q"], None),
        (["baseline", str(stack), "-o", str(out / "stack_baseline_extras"), "-q",
          "--save-background", "--save-corrected", "--save-overlay"], None),
        (["predict", str(stack), "-m", str(model), "--device", "cpu", "--z-mode", "watershed", "-o", str(pred), "-q"],
         None),
        (["predict", str(stack), "-m", str(model), "--device", "cpu", "--z-mode", "stitch", "-o", str(stitch), "-q"],
         None),
    ]
    for name, labels in (("baseline", seg), ("predict", pred), ("stitch", stitch)):
        # GeoJSON has no z: refused for stacks, so every other format.
        cmds.append((["export", str(labels / f"{stack.stem}_labels.tif"), "-f", "labels,binary,png,imagej-roi,csv",
                      "--image", str(stack), "-o", str(out / f"stack_export_{name}"), "-q"], None))
        cmds.append((["evaluate", str(labels), str(truth), "--csv", str(out / f"stack_evaluate_{name}.csv"), "--json",
                      "-q"], out / f"stack_evaluate_{name}.json"))
        cmds += _measure(labels, folder, out / f"stack_measure_{name}")
    return cmds


# Written by checkout A's interpreter and code: the mosaic tiles 256 x 256 corners of the 2-D sample images
# 8 x 8 (2048 x 2048, over band mode's 1024-row bands and four Dask blocks); the stack is README's synthetic one,
# smaller.
_MAKE_INPUTS = textwrap.dedent("""
    import sys
    from pathlib import Path

    import numpy as np
    import tifffile

    from segtool.volume.synthetic import make_nuclei_stack

    images, inputs = Path(sys.argv[1]), Path(sys.argv[2])
    crops = [tifffile.imread(p) for p in sorted(images.glob("*.tif"))]
    crops = [a[:256, :256] for a in crops if a.ndim == 2 and min(a.shape) >= 256]
    if not crops:
        sys.exit(f"no 2-D image of at least 256 x 256 pixels in {images} for the mosaic")
    dtype = np.result_type(*crops)
    mosaic = np.vstack([np.hstack([crops[(8 * r + c) % len(crops)] for c in range(8)]) for r in range(8)])
    (inputs / "large").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(inputs / "large" / "mosaic.tif", mosaic.astype(dtype))
    image, labels = make_nuclei_stack((16, 128, 128), z_spacing=2.0, n_nuclei=12, seed=0)
    for folder, name, data in (("stack", "stack.tif", image), ("stack_truth", "stack_masks.tif", labels)):
        (inputs / folder).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(inputs / folder / name, data, imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})
""")


def _make_inputs(checkout: Path, python: str, images: Path, inputs: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(checkout.resolve()))
    print(f"[{checkout}] writing the mosaic and the Z stack to {inputs}", file=sys.stderr)
    proc = subprocess.run([python, "-c", _MAKE_INPUTS, str(images), str(inputs)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"could not write the stand-in inputs with {checkout}:\n{proc.stderr}")


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
    parser.add_argument("--sample-only", action="store_true",
                        help="only the sample images (no band mode, Dask blocks or Z stacks)")
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
    model = args.model.resolve()
    extra: list[tuple[list[str], Path | None]] = []
    if not args.sample_only:
        _make_inputs(args.a, args.python, args.images, inputs)
        extra = _large_commands(Path("../inputs/large/mosaic.tif"), model)
        extra += _stack_commands(Path("../inputs/stack/stack.tif"), Path("../inputs/stack_truth"), model)
    sides = {}
    for label, checkout in (("a", args.a), ("b", args.b)):
        out = work / label
        if out.exists():
            shutil.rmtree(out)
        cmds = [cmd for images, gt, tag in sets for cmd in _commands(images, gt, model, tag)] + extra
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
