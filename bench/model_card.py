"""Write a model card into a model file: data set, its licence, where it was trained, and test scores.

``segtool model info`` prints the card beside what training recorded itself
(command, epochs, wall time, validation scores). The test scores come from a
``segtool evaluate --json`` report of the model's predictions on a test split
it was never trained or tuned on; the card keeps the command that produced
them, so a reader can rerun it. The model file is rewritten atomically
(weights untouched) and reloaded to check it.

Usage (the shipped model, after step 2 of the recipe in MODELS.md)::

    segtool predict ../shared/data/dsb2018_fluo/test/images -o runs/pred_test -q
    segtool evaluate runs/pred_test ../shared/data/dsb2018_fluo/test/masks --json -q > runs/pred_test.json
    python bench/model_card.py segtool/models/nuclei.pt --evaluation runs/pred_test.json \\
        --dataset "dsb2018_fluo (BBBC038v1 / 2018 Data Science Bowl, fluorescence subset)" --licence "CC0 1.0" \\
        --hardware "2-core AMD EPYC CPU (AVX512-BF16), no GPU" --training-time "59 min 13 s (/usr/bin/time)" \\
        --test-command "segtool predict ../shared/data/dsb2018_fluo/test/images -o runs/pred_test"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


from _payload import save_payload  # bench/ helper, beside this script


def test_scores(report: dict, command: str | None) -> dict:
    """The card's test entry from a ``segtool evaluate --json`` report (summed counts over all images)."""
    total = report["total"]
    by_threshold = {round(row["threshold"], 2): row for row in total["per_threshold"]}
    if 0.5 not in by_threshold or 0.7 not in by_threshold:
        raise SystemExit("the evaluation report needs IoU thresholds 0.5 and 0.7 (segtool evaluate's default range)")
    return {
        "images": total["n_images"],
        "objects": total["n_true"],
        "ap_iou50": round(by_threshold[0.5]["ap"], 4),
        "ap_iou70": round(by_threshold[0.7]["ap"], 4),
        "f1_iou50": round(by_threshold[0.5]["f1"], 4),
        "ap_mean": round(total["ap_mean"], 4),
        "thresholds": sorted(by_threshold),
        "ap_curve": [round(by_threshold[t]["ap"], 4) for t in sorted(by_threshold)],
        "command": command,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--evaluation", type=Path, required=True, help="segtool evaluate --json report on the test split")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--licence", required=True)
    parser.add_argument("--hardware", help="what it was trained on")
    parser.add_argument("--training-time", help="wall time of the training, as measured (for models trained before segtool recorded it)")
    parser.add_argument("--test-command", help="the predict command whose output was evaluated")
    args = parser.parse_args()

    card = {
        "dataset": args.dataset,
        "licence": args.licence,
        "hardware": args.hardware,
        "training_time": args.training_time,
        "test": test_scores(json.loads(args.evaluation.read_text()), args.test_command),
    }
    payload = torch.load(args.model, map_location="cpu", weights_only=True)
    metadata = json.loads(payload["metadata"])
    metadata["card"] = card
    payload["metadata"] = json.dumps(metadata)
    save_payload(payload, args.model)  # atomically, and reloaded: no file left that does not load
    print(json.dumps(card))


if __name__ == "__main__":
    main()
