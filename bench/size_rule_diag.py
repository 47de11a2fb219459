"""Which images gain or lose when the size estimate resizes them? Per image, AP counts at several scales.

For each image of a split (resized by each factor, as ``sweep_scale.py`` does, from the same cache), the shipped
model's size estimate is made once (:func:`segtool.infer.sizing.estimate_for_model`), and the image is predicted
and scored at: its own size (``s1``), the estimate's scale (``chosen``), the scales that bring the estimate to each
``--targets`` diameter (``t16.15``, ...) and the scale that brings the true median diameter to the training
diameter (``oracle``). One JSON line per image and factor (true and estimated diameter, the ladder, TP/FP/FN at
IoU 0.5 and 0.7 per scale), so any rule that picks one of these scales can be scored afterwards without
predicting again (``--summary``). The network runs in this process (torch, ``--precision``), not through the
``segtool predict`` command, so the totals match ``sweep_scale.py`` to within a few objects, not exactly.

Usage::

    python bench/size_rule_diag.py --data /tmp/val56 --factors 1,2,3 --out runs/logs/diag.jsonl
    python bench/size_rule_diag.py --summary runs/logs/diag.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sweep import DEFAULT_CACHE, DEFAULT_DATA, list_split, prepare, scale_condition  # noqa: E402

#: Diameters the estimate is brought to besides the training one: the 1.3x band's edges and a few between.
TARGETS = (16.15, 24.0, 27.3, 31.0)
COUNTS = ("tp5", "fp5", "fn5", "tp7", "fp7", "fn7")


def score_image(folder: Path, name: str, model, targets) -> dict:
    """The estimate and the counts at each scale for one image of ``folder``."""
    import tifffile

    from segtool.infer.instances import maps_to_labels
    from segtool.infer.predict import model_diameter, normalize_for_model, predict_maps, scaled_objects
    from segtool.infer.sizing import estimate_for_model, median_diameter, resize_channels
    from segtool.io import read_image
    from segtool.metrics import match_labels
    from segtool.pipeline.options import ObjectOptions, TileOptions

    start = time.perf_counter()
    trained = model_diameter(model)
    objects = ObjectOptions()
    image = read_image(folder / "images" / name, colour=model.config.reads_colour)
    truth = tifffile.imread(folder / "masks" / name)
    true_d, n_true = median_diameter(truth)
    normalized = normalize_for_model(image.data, model)
    est = estimate_for_model(normalized, model, objects=objects.resolve(model.config), trained_diameter=trained)
    scales = {"s1": 1.0, "chosen": est.scale}
    if est.diameter:
        scales.update({f"t{t:g}": t / est.diameter for t in targets})
    if true_d > 0:
        scales["oracle"] = trained / true_d
    done: dict[float, dict] = {}
    results = {}
    for key, scale in scales.items():
        scale = float(min(4.0, max(0.05, scale)))
        same = next((s for s in done if abs(s / scale - 1.0) < 0.01), None)  # within 1 %: the same prediction
        if same is None:
            height, width = normalized.shape[1:]
            data = normalized if scale == 1.0 else resize_channels(
                normalized, (max(1, round(height * scale)), max(1, round(width * scale))))
            maps, _ = predict_maps(data, model, image.data.shape[-2:], tiling=TileOptions(scale=scale))
            labels = maps_to_labels(maps, target=model.config.target, **scaled_objects(objects, model.config, scale))
            c = match_labels(truth, labels, thresholds=(0.5, 0.7))
            done[scale] = {"scale": scale, "n_pred": int(labels.max()),
                           **{k: int(getattr(c, k[:2])[int(k[2] == "7")]) for k in COUNTS}}
            same = scale
        results[key] = done[same]
    return {"name": name, "true_d": true_d, "n_true": n_true, "est_d": est.diameter, "est_scale": est.scale,
            "ladder": est.ladder, "res": results, "seconds": round(time.perf_counter() - start, 2)}


def summarise(path: Path) -> None:
    """AP@0.5 / AP@0.7 per factor for each scale key, from the summed counts of a ``--out`` file."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    factors = sorted({r["factor"] for r in records})
    keys = sorted({k for r in records for k in r["res"]}, key=lambda k: (k[0] != "s", k))
    print("| scale used | " + " | ".join(f"{f:g}x AP@0.5 / AP@0.7" for f in factors) + " | mean AP@0.5 |")
    print("|---|" + "---|" * len(factors) + "---:|")
    for key in keys:
        cells, aps = [], []
        for factor in factors:
            sums = defaultdict(int)
            for r in records:
                if r["factor"] == factor:
                    chosen = r["res"].get(key, r["res"]["s1"])  # no estimate: the image's own size
                    for k in COUNTS:
                        sums[k] += chosen[k]
            ap5 = sums["tp5"] / max(1, sums["tp5"] + sums["fp5"] + sums["fn5"])
            ap7 = sums["tp7"] / max(1, sums["tp7"] + sums["fp7"] + sums["fn7"])
            aps.append(ap5)
            cells.append(f"{ap5:.3f} / {ap7:.3f}")
        print(f"| {key} | " + " | ".join(cells) + f" | {sum(aps) / len(aps):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="split folder with images/ and masks/")
    parser.add_argument("--factors", default="1,2,3", help="comma-separated resize factors (default 1,2,3)")
    parser.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGETS),
                        help="diameters (px) the estimate is also brought to")
    parser.add_argument("-m", "--model", help="model file (default: the shipped nuclei model)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--limit", type=int, help="only the first N images (sorted by name)")
    parser.add_argument("--out", type=Path, help="JSON lines file, appended to")
    parser.add_argument("--summary", type=Path, help="only print the table of a finished --out file")
    args = parser.parse_args()
    if args.summary:
        summarise(args.summary)
        return
    if args.out is None:
        raise SystemExit("--out FILE is needed (or --summary FILE)")
    from segtool.infer.network import load_for_inference
    from segtool.infer.predict import find_packaged_model

    model = load_for_inference(args.model or find_packaged_model(), device="cpu", threads=args.threads,
                               precision=args.precision)
    targets = [float(t) for t in args.targets.split(",") if t.strip()]
    names = list_split(args.data, args.limit)
    with open(args.out, "a") as out:
        for factor in (float(f) for f in args.factors.split(",") if f.strip()):
            folder = args.data if factor == 1.0 else prepare(scale_condition(factor), args.data, names, args.cache)
            for name in names:
                record = {"factor": factor, **score_image(folder, name, model, targets)}
                out.write(json.dumps(record) + "\n")
                out.flush()
                print(f"{factor:g}x {name[:12]} true {record['true_d']:.1f} est {record['est_d'] or 0:.1f} "
                      f"scale {record['est_scale']:.3f} ({record['seconds']:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
