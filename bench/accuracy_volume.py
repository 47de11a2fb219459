"""Object-level 3-D accuracy on synthetic Z stacks: baseline (3-D) and predict (stitch / watershed).

Stacks from :func:`segtool.volume.synthetic.make_nuclei_stack` (64 x 256 x 256,
z spacing 2, uneven illumination in x-y and z, 40 nuclei asked, 30 % placed
touching). Scores are F1, precision, recall and AP at 3-D IoU 0.5 from the
match counts summed over the stacks (``segtool.metrics.match_labels``). The
predict rows share one network pass per stack; their time includes it.

Seeds 100-104 were used to choose settings (split h, stitch threshold, the
default mode); report on seeds 0-4::

    python bench/accuracy_volume.py --seeds 0 1 2 3 4
    python bench/accuracy_volume.py --seeds 100 101 --methods stitch --stitch 0.1 0.25 0.4   # tuning

Not run by pytest.
"""

from __future__ import annotations

import argparse
import time

from segtool.metrics import match_labels
from segtool.volume.baseline import segment_baseline_3d
from segtool.volume.synthetic import make_nuclei_stack

METHODS = ("baseline", "baseline-smooth1", "stitch", "watershed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    parser.add_argument("--z-spacing", type=float, default=2.0)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--stitch", type=float, nargs="+", default=[0.25], help="stitch thresholds to try")
    parser.add_argument("--model", default=None, help="model file (default: the shipped nuclei model)")
    args = parser.parse_args()

    model = None
    if {"stitch", "watershed"} & set(args.methods):
        from segtool.infer.predict import find_packaged_model
        from segtool.infer.network import load_for_inference

        model = load_for_inference(args.model or find_packaged_model(), device="cpu")

    stacks = [make_nuclei_stack(tuple(args.shape), z_spacing=args.z_spacing, seed=s) for s in args.seeds]
    runs = []
    for method in args.methods:
        if method == "stitch":
            runs += [(f"predict stitch {t:g}", method, t) for t in args.stitch]
        else:
            runs.append((method if method != "watershed" else "predict watershed", method, None))
    # The network pass is shared by both predict modes: maps are computed once per stack (timed once).
    maps_cache: dict[int, tuple[list, float]] = {}

    def maps_of(index: int, image):
        from segtool.volume.predict import StackPredictOptions, predict_stack_maps, stack_percentiles

        if index not in maps_cache:
            start = time.perf_counter()
            norm = stack_percentiles(list(image), model.config.norm_low, model.config.norm_high)
            maps = list(predict_stack_maps(list(image), model, norm=norm, options=StackPredictOptions()))
            maps_cache[index] = (maps, time.perf_counter() - start)
        return maps_cache[index]

    print(f"stacks {args.shape} z-spacing {args.z_spacing} seeds {args.seeds}")
    print("| method | F1@0.5 | precision | recall | AP@0.5 | objects (true) | s/stack |")
    print("|---|---|---|---|---|---|---|")
    for name, method, threshold in runs:
        total, seconds, n_pred, n_true = None, 0.0, 0, 0
        for index, (image, truth) in enumerate(stacks):
            start = time.perf_counter()
            if method.startswith("baseline"):
                labels = segment_baseline_3d(image, z_spacing=args.z_spacing, split=True,
                                             smooth=1.0 if method == "baseline-smooth1" else 0.0).labels
            else:
                from segtool.volume.predict import StackPredictOptions, maps_to_labels_3d

                maps, network_seconds = maps_of(index, image)
                start -= network_seconds
                options = StackPredictOptions(mode=method, stitch_threshold=threshold or 0.25)
                labels = maps_to_labels_3d(maps, model.config, z_spacing=args.z_spacing, options=options)
            seconds += time.perf_counter() - start
            counts = match_labels(truth, labels, thresholds=[0.5])
            total = counts if total is None else total + counts
            n_pred += int(labels.max())
            n_true += int(truth.max())
        print(f"| {name} | {total.f1[0]:.3f} | {total.precision[0]:.3f} | {total.recall[0]:.3f} | {total.ap[0]:.3f} "
              f"| {n_pred} ({n_true}) | {seconds / len(stacks):.1f} |", flush=True)


if __name__ == "__main__":
    main()
