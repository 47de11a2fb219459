"""Build one training folder from two data sets, for a model that holds both domains.

Issue 26 asks whether one versatile nuclei model (fluorescence and stained
tissue at once) beats named per-domain models. This script lays out the
data for that experiment as symbolic links, nothing copied:

* ``OUT/train/{images,masks}``: every training image of each set, except the
  validation images the shipped model of that set held out (read from the
  models' metadata); the second set's images repeated ``--repeat`` times
  (``name~k.tif``), so a small set is not drowned by a large one (patches are
  drawn image by image);
* ``OUT/val/{images,masks}``: those held-out validation images of both sets,
  so the versatile model is validated, and its post-processing tuned, on the
  same images as the named models.

Test images are never touched. Usage::

    python bench/mixed_set.py ../shared/data/dsb2018_fluo/train segtool/models/nuclei.pt \\
        ../shared/data/dsb2018_histo/train segtool/models/nuclei_he.pt --repeat 4 -o runs/mixed
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from segtool.model.modelfile import load_model


def link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source.resolve(), target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="training folder (images/, masks/) of the first set")
    parser.add_argument("first_model", type=Path, help="model whose validation files are held out of the first set")
    parser.add_argument("second", type=Path)
    parser.add_argument("second_model", type=Path)
    parser.add_argument("--repeat", type=int, default=1, help="times each training image of the second set is listed")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    if args.output.exists():
        raise SystemExit(f"{args.output}: exists; remove it first")
    counts = {}
    for folder, model, repeat in ((args.first, args.first_model, 1), (args.second, args.second_model, args.repeat)):
        held_out = set(load_model(model).metadata.get("validation_files") or [])
        if not held_out:
            raise SystemExit(f"{model}: metadata lists no validation files")
        names = sorted(p.name for p in (folder / "images").iterdir())
        for name in names:
            stem, suffix = Path(name).stem, Path(name).suffix
            if name in held_out:
                for kind in ("images", "masks"):
                    link(folder / kind / name, args.output / "val" / kind / name)
                continue
            for k in range(repeat):
                copy = name if k == 0 else f"{stem}~{k}{suffix}"
                for kind in ("images", "masks"):
                    link(folder / kind / name, args.output / "train" / kind / copy)
        counts[str(folder)] = (len(names) - len(held_out), len(held_out), repeat)
    for folder, (train, val, repeat) in counts.items():
        print(f"{folder}: {train} training images x {repeat}, {val} validation images")


if __name__ == "__main__":
    main()
