"""Scale sweep (issue #33): a test split resized by each factor, predicted with segtool's defaults, scored.

Images are resized by linear interpolation (low-pass filtered first when shrinking), masks by nearest neighbour,
so each factor is the same scene seen at another magnification. Each resized split is predicted by the
``segtool predict`` command with no options but those given here, so the sweep measures whatever predict does by
default, and scored at its own size: AP@0.5 and AP@0.7 from object counts summed over the images (the dataset
total of ``segtool evaluate``), beside the untouched split. Resized files are cached under ``runs/sweeps/``.

Usage::

    python bench/sweep_scale.py --threads 1                                     # dsb2018_fluo test, nuclei
    python bench/sweep_scale.py --data ../shared/data/dsb2018_histo/test -m nuclei-he --factors 0.5,0.75,1.5,2
    python bench/sweep_scale.py --threads 1 --oracle-diameter                   # the right --diameter by hand
    python bench/sweep_scale.py --limit 5 --factors 0.5,2 --predict-args "--diameter 21"
"""

from __future__ import annotations

import argparse

from _sweep import REFERENCE, Condition, add_common_arguments, run_sweep, scale_condition

#: The factors of issue #33.
FACTORS = (0.4, 0.5, 0.75, 1.5, 2.0, 3.0, 4.0, 5.0)


def parse_factors(text: str) -> tuple[float, ...]:
    """``--factors``: comma-separated positive numbers, e.g. ``0.5,2``.

    Examples
    --------
    >>> parse_factors("0.5, 2")
    (0.5, 2.0)
    """
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"--factors: numbers separated by commas, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise SystemExit(f"--factors: positive numbers, got {text!r}")
    return values


def scale_conditions(factors: tuple[float, ...] = FACTORS) -> list[Condition]:
    """The rows of the sweep: the untouched split, then one per factor (1 is the untouched split itself).

    Examples
    --------
    >>> [c.name for c in scale_conditions((0.5, 1.0, 2.0))]
    ['untouched', 'scale 0.5', 'scale 2']
    """
    return [Condition(REFERENCE, lambda image, labels, rng: (image, labels)),
            *(scale_condition(f) for f in factors if f != 1.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--factors", type=parse_factors, default=FACTORS,
                        help="comma-separated resize factors (default: 0.4,0.5,0.75,1.5,2,3,4,5)")
    args = parser.parse_args()
    run_sweep(scale_conditions(args.factors), args, "scale sweep")


if __name__ == "__main__":
    main()
