"""Copy a model file with another input transform (``UNetConfig.input``), weights untouched.

For zero-shot studies: the fluorescence model ``nuclei`` expects bright nuclei on a dark background;
given the hematoxylin density of stained tissue (or inverted brightfield) it sees that contrast
without any training. The copy records the change in its metadata (``input_changed_from``) and is
reloaded to check that it loads.

Usage::

    python bench/with_input.py nuclei --input hematoxylin -o runs/nuclei_hema.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from segtool.model.config import UNetConfig
from segtool.intake import INPUT_TRANSFORMS
from segtool.model.shipped import resolve_model

from _payload import save_payload  # bench/ helper, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model file or shipped model name")
    parser.add_argument("--input", required=True, choices=list(INPUT_TRANSFORMS))
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    path = resolve_model(args.model)[0]
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = json.loads(payload["config"])
    before = config.get("input", "intensity")
    config["input"] = args.input
    payload["config"] = json.dumps(UNetConfig.from_dict(config).to_dict())
    metadata = json.loads(payload.get("metadata") or "{}")
    metadata["input_changed_from"] = {"file": path.name, "input": before}
    payload["metadata"] = json.dumps(metadata)
    save_payload(payload, args.output)  # atomically, and reloaded: no file left that does not load
    print(args.output)


if __name__ == "__main__":
    main()
