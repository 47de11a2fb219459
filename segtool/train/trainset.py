"""Training data from files: pair images with masks, read them under the memory guard, hold out validation.

Used by ``segtool train``; arrays come back in memory, ready for
:func:`segtool.train.loop.train_model`.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segtool.errors import InputError, SegtoolError, first_line
from segtool.inputs import expand_inputs
from segtool.io import read_image, read_labels
from segtool.memory import MemoryBudget
from segtool.pairing import Pair, pair_by_stem

__all__ = ["BadPairs", "TrainingData", "check_data_arguments", "find_pairs", "load_pairs", "load_training_data"]

Arrays = list[tuple[np.ndarray, np.ndarray]]


class BadPairs(SegtoolError):
    """Some image/mask files cannot be used; ``problems`` holds ``(file, reason)`` for each."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(f"{len(problems)} bad image/mask file(s)")
        self.problems = problems


@dataclass(frozen=True)
class TrainingData:
    """Training and validation arrays with their image names, and how the validation images were chosen."""

    train: Arrays
    train_names: list[str]
    val: Arrays
    val_names: list[str]
    total: int  # image/mask pairs read from the training folders


def check_data_arguments(specs: Sequence[str]) -> None:
    """Check the shape of the data arguments: ``IMAGES MASKS``, or one folder holding ``images/`` and ``masks/``.

    The CLI calls this before anything is read, so a bad command line is
    refused as one (exit code 2).

    Raises
    ------
    InputError
        Naming what to give instead.

    Examples
    --------
    >>> check_data_arguments(["images/", "masks/"])
    """
    if len(specs) == 1:
        root = Path(specs[0])
        if not (root / "images").is_dir() or not (root / "masks").is_dir():
            missing = "" if root.exists() else " (no such folder)"
            raise InputError(
                f"{root}{missing}: give IMAGES and MASKS, or one folder that holds images/ and masks/ sub-folders"
            )
    elif len(specs) != 2:
        raise InputError(f"expected IMAGES MASKS (2 arguments) or one folder, got {len(specs)} arguments")


def find_pairs(specs: Sequence[str], *, recursive: bool = False) -> list[Pair]:
    """Pair images and masks from ``IMAGES MASKS`` or one folder holding ``images/`` and ``masks/``.

    Raises
    ------
    InputError
        Wrong number of arguments, missing folders, nothing found, or files
        without a partner (listed).
    """
    check_data_arguments(specs)
    if len(specs) == 1:
        specs = [str(Path(specs[0]) / "images"), str(Path(specs[0]) / "masks")]
    for spec in specs:
        if not Path(spec).expanduser().exists() and not glob.has_magic(spec):
            raise InputError(f"{spec}: no such file or folder")
    images = expand_inputs([specs[0]], recursive=recursive, kind="image")
    masks = expand_inputs([specs[1]], recursive=recursive, kind="labels")
    for spec, message in images.problems + masks.problems:
        raise InputError(f"{spec}: {message}")
    if not images.files:
        raise InputError(f"{specs[0]}: no image files found")
    if not masks.files:
        raise InputError(f"{specs[1]}: no mask files found")
    return pair_by_stem(images.files, masks.files)


def load_pairs(
    pairs: Sequence[Pair], *, channel: int | None, colour: bool = False, memory_limit: int | None = None
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Read every pair; return the arrays and image names, or raise :class:`BadPairs` listing every bad file.

    With ``colour``, images are (3, Y, X) (:func:`segtool.io.read_image`).
    ``memory_limit`` (bytes, None = no limit) is the memory guard: training
    holds every pair in memory, so each file is checked from its header
    against what the files read before it left of the limit, and refused
    before it is decoded.
    """
    arrays = []
    problems = []
    held = 0

    def budget() -> MemoryBudget | None:
        if memory_limit is None:
            return None
        return MemoryBudget(limit=max(memory_limit - held, 0), command="train",
                            way_out="train on fewer or smaller (cropped) images, or raise --max-memory")

    for pair in pairs:
        try:
            image = read_image(pair.image, channel=channel, colour=colour, memory=budget()).data
        except SegtoolError as err:
            problems.append((str(pair.image), first_line(err)))
            continue
        held += image.nbytes
        try:
            labels = read_labels(pair.mask, memory=budget()).data
        except SegtoolError as err:
            problems.append((str(pair.mask), f"not an integer label image: {first_line(err)}"))
            continue
        if labels.shape != image.shape[-2:]:
            problems.append((str(pair.mask), f"mask shape {labels.shape} differs from image shape {image.shape[-2:]} ({pair.image.name})"))
            continue
        held += labels.nbytes
        arrays.append((image, labels))
    if problems:
        raise BadPairs(problems)
    if not arrays:
        raise InputError("no usable image/mask pairs")
    return arrays, [str(p.image) for p in pairs]


def load_training_data(
    data: Sequence[str],
    val: Sequence[str] | None,
    *,
    fraction: float | None,
    split_seed: int,
    recursive: bool = False,
    channel: int | None = None,
    colour: bool = False,
    memory_limit: int | None = None,
) -> TrainingData:
    """Read the training pairs and either the ``val`` pairs or a held-out ``fraction`` of the training images.

    Parameters
    ----------
    data, val : sequence of str
        ``IMAGES MASKS`` or one folder (see :func:`find_pairs`); ``val`` None
        holds out ``fraction`` of the training images instead, chosen with
        ``split_seed``.
    memory_limit : int, optional
        Bytes all pairs together may take (training and validation).

    Raises
    ------
    BadPairs
        Files that cannot be used (each listed).
    InputError
        Nothing to train on.
    """
    from segtool.train.dataset import split_validation

    pairs = find_pairs(data, recursive=recursive)
    arrays, names = load_pairs(pairs, channel=channel, colour=colour, memory_limit=memory_limit)
    if val is not None:
        val_pairs = find_pairs(list(val), recursive=recursive)
        if memory_limit is not None:  # the training pairs are held too
            memory_limit -= sum(image.nbytes + labels.nbytes for image, labels in arrays)
        val_arrays, val_names = load_pairs(val_pairs, channel=channel, colour=colour,
                                           memory_limit=None if memory_limit is None else max(memory_limit, 0))
        return TrainingData(arrays, names, val_arrays, val_names, total=len(names))
    train_idx, val_idx = split_validation(len(arrays), fraction, np.random.default_rng(split_seed))
    return TrainingData(
        train=[arrays[i] for i in train_idx],
        train_names=[names[i] for i in train_idx],
        val=[arrays[i] for i in val_idx],
        val_names=[names[i] for i in val_idx],
        total=len(names),
    )
