"""Copy a model file with its weights stored as float16 (half the size; what shipped models use).

``tune_postprocess.py --half`` does the same while tuning; this converts a
model that was tuned already, leaving config and metadata as they are. The
copy is reloaded to check that it loads.

Usage::

    python bench/half_weights.py runs/he_ft_tuned.pt -o segtool/models/nuclei_he.pt
    python bench/half_weights.py runs/nuclei_sn.pt -o runs/nuclei_sn_half.pt --diameter 20.96

``--diameter`` records the training diameter ``predict --diameter auto`` resizes images to, for a model trained
on a set that ``bench/size_normalised_set.py`` resized to that diameter (training records the median of the
resized objects, which is not the diameter the set was built for).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


from _payload import save_payload  # bench/ helper, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--diameter", type=float, help="training diameter (px) to record in the metadata")
    args = parser.parse_args()
    payload = torch.load(args.model, map_location="cpu", weights_only=True)
    if args.diameter is not None:
        metadata = json.loads(payload["metadata"])
        metadata["median_diameter"] = args.diameter
        metadata["median_diameter_source"] = "the diameter its training set was resized to (bench/size_normalised_set.py)"
        payload["metadata"] = json.dumps(metadata)
    payload["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    save_payload(payload, args.output)  # atomically, and reloaded: no file left that does not load
    print(args.output)


if __name__ == "__main__":
    main()
