"""Copy a model file with its weights stored as float16 (half the size; what shipped models use).

``tune_postprocess.py --half`` does the same while tuning; this converts a
model that was tuned already, leaving config and metadata as they are. The
copy is reloaded to check that it loads.

Usage::

    python bench/half_weights.py runs/he_ft_tuned.pt -o segtool/models/nuclei_he.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


from _payload import save_payload  # bench/ helper, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    payload = torch.load(args.model, map_location="cpu", weights_only=True)
    payload["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    save_payload(payload, args.output)  # atomically, and reloaded: no file left that does not load
    print(args.output)


if __name__ == "__main__":
    main()
