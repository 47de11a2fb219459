"""``--shard K/N``: the part of a command's inputs that one of N processes takes.

An array job (SLURM, SGE, LSF) or a shell loop starts the same command N
times, each with its own ``--shard K/N``; together they take every input
exactly once. An input belongs to shard ``K`` when a hash of its *key* modulo
``N`` is ``K - 1``: the key is the input's path relative to the folder named
on the command line (``plate/B02/img.tif`` -> ``B02/img.tif`` for
``segtool baseline plate/ -r``), or the path as given for inputs named one by
one, by a glob or on stdin. So the split

- depends on nothing but the key: every process computes the same one, in any
  order, on any machine that sees the folder under another mount point;
- is stable as a folder grows: adding images never moves an earlier image to
  another shard (a re-run with ``--skip-existing`` only does the new ones);
- is balanced only on average: each shard gets about 1/N of the inputs (for 200
  inputs and N = 3, typically 67 +/- 8), and a shard of a very small folder may
  be empty (then it has nothing to do and exits 0).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from segtool.errors import InputError

__all__ = ["Shard", "parse_shard", "shard_key", "select_shard"]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based, as array jobs number their tasks).

    Examples
    --------
    >>> str(Shard(2, 3))
    '2/3'
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise InputError(f"--shard {self.index}/{self.count}: K must be between 1 and N")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, key: str) -> bool:
        """Whether the input with ``key`` belongs to this shard.

        Examples
        --------
        >>> [k for k in range(1, 4) if Shard(k, 3).holds("img01.tif")]  # exactly one shard
        [2]
        """
        digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index - 1


def parse_shard(text: str) -> Shard:
    """Parse ``K/N`` (``1 <= K <= N``).

    Raises
    ------
    InputError
        If ``text`` is not two whole numbers ``K/N`` with ``1 <= K <= N``.

    Examples
    --------
    >>> parse_shard("3/8")
    Shard(index=3, count=8)
    >>> parse_shard("0/2")
    Traceback (most recent call last):
    ...
    segtool.errors.InputError: --shard 0/2: K must be between 1 and N
    """
    parts = text.strip().split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"--shard must be K/N with whole numbers, e.g. 1/4; got {text!r}")
    return Shard(int(parts[0]), int(parts[1]))


def shard_key(path: Path, roots: Iterable[Path] = ()) -> str:
    """The key that places ``path`` in a shard: relative to the first of ``roots`` holding it, else as given.

    Examples
    --------
    >>> shard_key(Path("plate/B02/img.tif"), [Path("plate")])
    'B02/img.tif'
    >>> shard_key(Path("other/img.tif"), [Path("plate")])
    'other/img.tif'
    """
    for root in roots:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            continue
    return path.as_posix()


def select_shard(paths: Sequence[Path], shard: Shard | None, *, roots: Iterable[Path] = ()) -> list[Path]:
    """The inputs of ``paths`` that belong to ``shard`` (all of them when it is None), in their order.

    Parameters
    ----------
    paths : sequence of Path
        The expanded inputs.
    shard : Shard or None
    roots : iterable of Path
        The folders named on the command line (see :func:`shard_key`).

    Examples
    --------
    >>> files = [Path(f"in/img{i}.tif") for i in range(20)]
    >>> parts = [select_shard(files, Shard(k, 3), roots=[Path("in")]) for k in (1, 2, 3)]
    >>> sorted(p for part in parts for p in part) == sorted(files)
    True
    """
    if shard is None:
        return list(paths)
    roots = [Path(os.path.normpath(r)) for r in roots]
    return [p for p in paths if shard.holds(shard_key(Path(os.path.normpath(p)), roots))]
