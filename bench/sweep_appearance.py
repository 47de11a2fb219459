"""Appearance sweep (issue #33): a test split as other microscopes would record it, predicted with segtool's
defaults, scored beside the untouched split.

Conditions (``segtool.appearance`` makes each change; values fixed here, seeded per image):

- ``gamma 0.5``, ``gamma 2``: a display curve between the image's darkest and brightest value;
- ``blur 2``: Gaussian blur, sigma 2 pixels (defocus);
- ``poisson 20``: shot noise, the mean nucleus pixel (true masks) holding 20 photons;
- ``16-bit offset+gradient``: a uint16 camera image, offset 1000 counts, the image's range over 4000 counts, and
  a linear background ramp of 2000 counts across the field in a random direction;
- ``3 saturated blobs``: three domes cut at ten times the objects' contrast (Otsu's two classes, so in stained
  tissue white patches), each 1-2 times the image's median nucleus diameter, at random places (clipped at that
  level and at the dtype's maximum; pixels away from the blobs unchanged). Where
  nuclei are brighter than the background (fluorescence) a saturated blob is a cell, and its saturated area
  becomes a true object over the old masks; where nuclei are darker (stained tissue) it is glare and the masks
  stay as they were;
- ``jpeg 60``: saved as JPEG at quality 60 and read back.

Each condition's image keeps the source's dtype (rounded, clipped), except the 16-bit one. Transformed files are
cached under ``runs/sweeps/``. AP@0.5 and AP@0.7 from object counts summed over the images, as ``segtool evaluate``.

Usage::

    python bench/sweep_appearance.py --threads 1                        # dsb2018_fluo test, nuclei
    python bench/sweep_appearance.py --data ../shared/data/dsb2018_histo/test -m nuclei-he --threads 1
    python bench/sweep_appearance.py --limit 5 --conditions "gamma 2,jpeg 60"
"""

from __future__ import annotations

import argparse

import numpy as np

from _sweep import REFERENCE, Condition, add_common_arguments, median_diameter, run_sweep

try:
    from segtool import appearance
except ImportError:  # the module arrives with issue #33's augmentation work
    appearance = None

#: Offset, signal span and ramp height of the 16-bit condition, camera counts.
OFFSET, SIGNAL, RAMP = 1000.0, 4000.0, 2000.0


def to_dtype(image: np.ndarray, dtype) -> np.ndarray:
    """``image`` rounded and clipped into ``dtype``'s range (floats passed as float32).

    Examples
    --------
    >>> to_dtype(np.array([-3.2, 7.6, 300.0]), np.uint8)
    array([  0,   8, 255], dtype=uint8)
    """
    if not np.issubdtype(np.dtype(dtype), np.integer):
        return np.asarray(image, np.float32)
    info = np.iinfo(dtype)
    return np.clip(np.round(image), info.min, info.max).astype(dtype)


def nuclei_brighter(image: np.ndarray, labels: np.ndarray) -> bool:
    """Whether the objects of ``labels`` are brighter than the rest of ``image`` (channels averaged)."""
    grey = image.mean(axis=2) if image.ndim == 3 else image
    inside = labels > 0
    if inside.all() or not inside.any():
        return True
    return float(grey[inside].mean()) > float(grey[~inside].mean())


def add_blobs_to_labels(labels: np.ndarray, blobs: np.ndarray) -> np.ndarray:
    """``labels`` with each connected region of the boolean ``blobs`` painted over them as a new object.

    Old objects wholly covered disappear; the rest are renumbered 1..N in their old order, the blobs after them.

    Examples
    --------
    >>> labels = np.array([[1, 1, 0, 2, 2, 0, 0]], np.uint16)
    >>> add_blobs_to_labels(labels, np.array([[0, 0, 0, 1, 1, 0, 1]], bool))
    array([[1, 1, 0, 2, 2, 0, 3]], dtype=uint16)
    """
    from scipy import ndimage as ndi

    out = np.where(blobs, 0, labels)
    kept = np.unique(out[out > 0])
    lut = np.zeros(int(labels.max()) + 1, np.int64)
    lut[kept] = np.arange(1, kept.size + 1)
    out = lut[out]
    regions, count = ndi.label(blobs)
    out[blobs] = regions[blobs] + kept.size
    dtype = np.uint16 if kept.size + count < 65536 else np.uint32
    return out.astype(dtype)


def _gamma(value):
    return lambda image, labels, rng: (to_dtype(appearance.adjust_gamma(image, value), image.dtype), labels)


def _blur(image, labels, rng):
    return to_dtype(appearance.gaussian_blur(image, 2.0), image.dtype), labels


def _poisson(image, labels, rng):
    return to_dtype(appearance.shot_noise(image, rng, photons=20.0, foreground=labels > 0), image.dtype), labels


def _sixteen_bit(image, labels, rng):
    counts = appearance.offset_gradient(image, rng, offset=OFFSET, signal=SIGNAL, gradient=RAMP / SIGNAL)
    return to_dtype(counts, np.uint16), labels


def _blobs_only(image, rng, diameter):
    """``appearance.saturated_blobs`` (3 blobs), changed only near the blobs.

    As merged (augment d07fb44) it also lifts every pixel darker than the background level to that level, over
    the whole image: a fluorescence background's darker half, and in stained tissue every nucleus, which turns
    pale. Where the blobs are is read from the same call, with the same random draws (they do not depend on the
    image), on an image whose background is 0 and saturation level 10; away from them the input is kept.
    """
    import copy

    probe = np.zeros(image.shape[:2], np.float32)
    probe[0, 0] = 1.0  # levels: background 0, objects 1, so saturation at 10
    weight = appearance.saturated_blobs(probe, copy.deepcopy(rng), count=3, diameter=diameter) / 10.0
    weight[0, 0] = 0.0
    out = appearance.saturated_blobs(image, rng, count=3, diameter=diameter)
    near = weight > 0.01  # within ~0.85 of a blob's diameter from its centre
    return np.where(near if image.ndim == 2 else near[..., None], out, image.astype(np.float32))


def _blobs(image, labels, rng):
    diameter = median_diameter([labels])
    if not np.isfinite(diameter):
        diameter = 20.0
    out = _blobs_only(image, rng, diameter)
    saturated = to_dtype(out, image.dtype)
    if not nuclei_brighter(image, labels):
        return saturated, labels
    # the blobs' saturated cores: at the clip level now, and not there before (a nucleus already that bright stays)
    level = np.minimum(out.max(), np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else out.max())
    grey_new = saturated.min(axis=2) if saturated.ndim == 3 else saturated
    grey_old = image.min(axis=2) if image.ndim == 3 else image
    blobs = (grey_new >= level) & (grey_old < level)
    return saturated, add_blobs_to_labels(labels, blobs)


def _jpeg(image, labels, rng):
    return to_dtype(appearance.jpeg_artifacts(image, quality=60), image.dtype), labels


def appearance_conditions() -> list[Condition]:
    """The rows of the sweep, the untouched split first.

    Examples
    --------
    >>> [c.name for c in appearance_conditions()][:3]
    ['untouched', 'gamma 0.5', 'gamma 2']
    """
    return [
        Condition(REFERENCE, lambda image, labels, rng: (image, labels)),
        Condition("gamma 0.5", _gamma(0.5), {"gamma": 0.5}),
        Condition("gamma 2", _gamma(2.0), {"gamma": 2.0}),
        Condition("blur 2", _blur, {"sigma": 2.0}),
        Condition("poisson 20", _poisson, {"photons": 20.0}),
        Condition("16-bit offset+gradient", _sixteen_bit, {"offset": OFFSET, "signal": SIGNAL, "ramp": RAMP}),
        Condition("3 saturated blobs", _blobs, {"count": 3, "size": [1.0, 2.0], "brightness": 10.0, "elsewhere": "unchanged"}),
        Condition("jpeg 60", _jpeg, {"quality": 60}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--conditions", help="comma-separated condition names to run (default: all); the untouched "
                        "split always runs first")
    args = parser.parse_args()
    if appearance is None:
        raise SystemExit("segtool.appearance is missing: this sweep needs the appearance changes of issue #33")
    conditions = appearance_conditions()
    if args.conditions:
        wanted = [w.strip() for w in args.conditions.split(",") if w.strip()]
        unknown = sorted(set(wanted) - {c.name for c in conditions})
        if unknown:
            raise SystemExit(f"--conditions: unknown {', '.join(unknown)}; known: {', '.join(c.name for c in conditions)}")
        conditions = [c for c in conditions if c.name == REFERENCE or c.name in wanted]
    run_sweep(conditions, args, "appearance sweep")


if __name__ == "__main__":
    main()
