"""Write synthetic nuclei images and their exact label masks as TIFF files.

Each image comes from :func:`segtool.synthetic.make_nuclei_image` (nuclei on an
unevenly lit background with shot and read noise). The output folder gets the
same layout as the project's annotated data::

    <out>/images/synthetic_000.tif   image (uint16 by default, or float32)
    <out>/masks/synthetic_000.tif    uint16 instance labels, 0 = background

Image ``i`` uses seed ``--seed + i``; the illumination alternates between
gradient and vignette unless ``--illumination`` is given.

Example::

    python sample_data/make_synthetic.py --out synthetic/ --count 10 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tifffile

from segtool.synthetic import ILLUMINATIONS, make_nuclei_image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (images/ and masks/ are made in it)")
    parser.add_argument("--count", type=int, default=10, help="number of image/mask pairs (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first image (default 0)")
    parser.add_argument(
        "--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"), help="image shape (default 256 256)"
    )
    parser.add_argument("--nuclei", type=int, default=None, help="nuclei per image (default: about 1 per 2200 pixels)")
    parser.add_argument(
        "--illumination", choices=ILLUMINATIONS, default=None, help="default: alternate gradient/vignette"
    )
    parser.add_argument("--noise", type=float, default=1.0, help="noise strength (0 = none, default 1)")
    parser.add_argument("--touching", type=float, default=0.3, help="fraction of nuclei touching another (default 0.3)")
    parser.add_argument("--dtype", choices=("uint16", "float32"), default="uint16", help="image dtype (default uint16)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    if args.count < 0 or args.seed < 0:
        parser.error("--count and --seed must be >= 0")

    images, masks = args.out / "images", args.out / "masks"
    names = [f"synthetic_{args.seed + i:03d}.tif" for i in range(args.count)]
    existing = [p for name in names for p in (images / name, masks / name) if p.exists()]
    if existing and not args.overwrite:
        print(f"make_synthetic: error: {existing[0]} exists (use --overwrite)", file=sys.stderr)
        return 1
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    height, width = args.size
    n_nuclei = args.nuclei if args.nuclei is not None else max(1, height * width // 2200)
    for i, name in enumerate(names):
        illumination = args.illumination or ("gradient", "vignette")[i % 2]
        image, labels = make_nuclei_image(
            (height, width),
            n_nuclei=n_nuclei,
            seed=args.seed + i,
            illumination=illumination,
            noise=args.noise,
            touching=args.touching,
            dtype=args.dtype,
        )
        tifffile.imwrite(images / name, image, compression="zlib")
        tifffile.imwrite(masks / name, labels, compression="zlib")
        print(images / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
