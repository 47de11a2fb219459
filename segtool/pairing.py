"""Pair image files with their mask files by file name.

Used by ``segtool train`` (images with training masks) and ``segtool
evaluate`` (ground truth with predictions), and by ``segtool export`` (the
intensity image of a label image). Pure path logic: nothing is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from segtool.errors import InputError
from segtool.inputs import LABEL_SUFFIXES, base_stem
from segtool.io import IMAGE_SUFFIXES

__all__ = ["MASK_SUFFIXES", "LabelPair", "Pair", "find_image", "mask_stem", "pair_by_stem", "pair_label_files"]

#: Endings a mask's name may carry after the image's name (Cellpose writes
#: ``_cp_masks``; other tools ``_mask``, ``_masks``, ``_labels``, ``_seg``).
MASK_SUFFIXES: tuple[str, ...] = LABEL_SUFFIXES

_SHOW = 5  # unmatched names listed in a message before "and N more"


@dataclass(frozen=True)
class Pair:
    """An image file and the mask file that belongs to it."""

    image: Path
    mask: Path
    stem: str


def _strip_suffix(stem: str, suffixes: Sequence[str]) -> str | None:
    lower = stem.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):
        if suffix and lower.endswith(suffix.lower()) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def mask_stem(path: str | Path, *, mask_suffixes: Sequence[str] = MASK_SUFFIXES) -> str:
    """Name stem of a mask or label file without its mask ending (``a_cp_masks.png`` -> ``a``).

    Examples
    --------
    >>> mask_stem("x/img01_cp_masks.png"), mask_stem("img02.tif")
    ('img01', 'img02')
    """
    stem = base_stem(Path(path))
    stripped = _strip_suffix(stem, mask_suffixes)
    return stem if stripped is None else stripped


def _listing(what: str, names: list[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
    return f"{len(names)} {what}: {shown}{more}"


def pair_by_stem(
    images: Iterable[str | Path],
    masks: Iterable[str | Path],
    *,
    mask_suffixes: Sequence[str] = MASK_SUFFIXES,
    allow_unmatched: bool = False,
) -> list[Pair]:
    """Match each image with the mask whose name has the same stem.

    A mask matches an image if its stem equals the image's stem, or equals
    it followed by one of ``mask_suffixes`` (case-insensitive), so
    ``cell_01.tif`` pairs with ``cell_01.tif``, ``cell_01_mask.png`` or
    ``cell_01_cp_masks.tif``. Extensions need not agree.

    Parameters
    ----------
    images, masks : iterable of path
        Image files and mask files (already expanded from folders).
    mask_suffixes : sequence of str, optional
        Endings allowed on a mask's stem.
    allow_unmatched : bool, optional
        Return the pairs found and ignore files without a partner instead of
        raising.

    Returns
    -------
    pairs : list of Pair
        Sorted by stem.

    Raises
    ------
    InputError
        If there are no images, two images share a stem, two masks claim the
        same image, or (unless ``allow_unmatched``) any file has no partner;
        the message lists the files concerned.

    Examples
    --------
    >>> pairs = pair_by_stem(["im/b.tif", "im/a.tif"], ["gt/a_mask.png", "gt/b.tif"])
    >>> [(p.stem, p.mask.name) for p in pairs]
    [('a', 'a_mask.png'), ('b', 'b.tif')]
    """
    image_paths = [Path(p) for p in images]
    mask_paths = [Path(p) for p in masks]
    if not image_paths:
        raise InputError("no image files given")

    by_stem: dict[str, Path] = {}
    for path in image_paths:
        stem = base_stem(path)
        if stem in by_stem and by_stem[stem] != path:
            raise InputError(f"two images have the same name stem {stem!r}: {by_stem[stem]} and {path}")
        by_stem[stem] = path

    claimed: dict[str, Path] = {}
    unmatched_masks: list[str] = []
    for path in mask_paths:
        stem = base_stem(path)
        if stem in by_stem:
            key = stem
        else:
            stripped = _strip_suffix(stem, mask_suffixes)
            key = stripped if stripped is not None and stripped in by_stem else None
        if key is None:
            unmatched_masks.append(str(path))
            continue
        if key in claimed and claimed[key] != path:
            raise InputError(f"two masks match image {by_stem[key]}: {claimed[key]} and {path}")
        claimed[key] = path

    unmatched_images = sorted(str(by_stem[s]) for s in by_stem if s not in claimed)
    if (unmatched_images or unmatched_masks) and not allow_unmatched:
        parts = []
        if unmatched_images:
            parts.append(_listing("image(s) without a mask", unmatched_images))
        if unmatched_masks:
            parts.append(_listing("mask(s) without an image", sorted(unmatched_masks)))
        hint = f" (masks are matched by file name, optionally ending in {', '.join(mask_suffixes)})"
        raise InputError("; ".join(parts) + hint)
    return [Pair(image=by_stem[s], mask=claimed[s], stem=s) for s in sorted(claimed)]


@dataclass(frozen=True)
class LabelPair:
    """A predicted label file and its ground truth."""

    name: str
    pred: Path
    gt: Path


def pair_label_files(pred: list[Path], gt: list[Path]) -> tuple[list[LabelPair], list[tuple[str, str]]]:
    """Pair predictions with ground truth by name stem, ignoring mask endings on both sides.

    Unlike :func:`pair_by_stem`, which raises on the first problem, this
    reports every unpaired or ambiguous file and returns the pairs it could
    make (``segtool evaluate`` scores those and lists the rest as errors).

    ``img01_labels.tif`` (segtool), ``img01_cp_masks.png`` (Cellpose), ``img01_mask.tif`` and ``img01.tif``
    all pair by ``img01``. Where a folder holds both ``img01.tif`` and ``img01_labels.tif`` (labels saved
    beside their images), the one with the mask ending is taken. Two single files are paired whatever
    their names.

    Returns
    -------
    pairs : list of LabelPair
        Sorted by name.
    problems : list of (str, str)
        ``(file, message)`` for every file without a partner or with an ambiguous name.

    Examples
    --------
    >>> pairs, problems = pair_label_files([Path("p/a_labels.tif")], [Path("g/a.tif"), Path("g/b.tif")])
    >>> [(p.name, p.gt.name) for p in pairs], problems
    ([('a', 'a.tif')], [('g/b.tif', 'ground truth has no prediction (looked for a name starting with b)')])
    """
    if len(pred) == 1 and len(gt) == 1:
        return [LabelPair(mask_stem(pred[0]), pred[0], gt[0])], []
    problems: list[tuple[str, str]] = []

    def index(files: list[Path], what: str) -> dict[str, Path]:
        found: dict[str, list[Path]] = {}
        for path in files:
            found.setdefault(mask_stem(path), []).append(path)
        unique = {}
        for key, paths in found.items():
            if len(paths) > 1:
                # Masks saved beside their images (x.tif + x_labels.tif): the file with a mask ending is the labels.
                suffixed = [p for p in paths if base_stem(p) != key]
                paths = suffixed if len(suffixed) == 1 else paths
            if len(paths) > 1:
                names = ", ".join(str(p) for p in paths)
                problems.append((str(paths[0].parent), f"several {what} files for {key!r}: {names}"))
            else:
                unique[key] = paths[0]
        return unique

    by_pred = index(pred, "prediction")
    by_gt = index(gt, "ground truth")
    for key in sorted(set(by_pred) - set(by_gt)):
        problems.append((str(by_pred[key]), f"prediction has no ground truth (looked for a name starting with {key})"))
    for key in sorted(set(by_gt) - set(by_pred)):
        problems.append((str(by_gt[key]), f"ground truth has no prediction (looked for a name starting with {key})"))
    pairs = [LabelPair(key, by_pred[key], by_gt[key]) for key in sorted(set(by_pred) & set(by_gt))]
    return pairs, problems


def find_image(labels_path: Path, image: Path) -> Path:
    """The intensity image for ``labels_path``: ``image`` itself, or the file in folder ``image`` with the same stem.

    Parameters
    ----------
    labels_path : Path
        A label image.
    image : Path
        An image file, or a folder of images.

    Returns
    -------
    path : Path
        The image that belongs to ``labels_path``.

    Raises
    ------
    InputError
        If the folder holds no image, or several images, with that stem.
    """
    if not image.is_dir():
        return image
    stem = mask_stem(labels_path)
    candidates = sorted(
        p
        for p in image.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES) and base_stem(p) == stem
    )
    candidates = [p for p in candidates if p.resolve() != labels_path.resolve()]
    if not candidates:
        raise InputError(f"no image named {stem}.* ({', '.join(IMAGE_SUFFIXES)}) in {image}")
    if len(candidates) > 1:
        raise InputError(f"several images match {stem!r} in {image}: {', '.join(p.name for p in candidates)}")
    return candidates[0]
