"""The inputs a command was given: files, folders, globs, and ``-`` for paths on stdin; this process's shard."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from segtool.inputs import ExpandedInputs, expand_inputs
from segtool.shard import Shard, select_shard

__all__ = ["expand_specs", "shard_files"]


def _read_stdin_lines() -> list[str] | None:
    if sys.stdin is None or sys.stdin.closed:
        return None
    try:
        if sys.stdin.isatty():
            return None
    except (AttributeError, ValueError):
        pass
    return sys.stdin.read().splitlines()


def expand_specs(specs: Sequence[str], *, kind: str = "image", recursive: bool = False) -> ExpandedInputs:
    """Expand the input specs of a command; ``-`` reads more paths from stdin, one per line."""
    stdin_lines = _read_stdin_lines() if "-" in specs else None
    return expand_inputs(specs, recursive=recursive, kind=kind, stdin_lines=stdin_lines)


def shard_files(files: Sequence[Path], specs: Sequence[str], shard: Shard | None) -> list[Path]:
    """The expanded inputs ``files`` that ``--shard`` gives this process (keys relative to the folders in ``specs``)."""
    if shard is None:
        return list(files)
    roots = [Path(spec).expanduser() for spec in specs if spec != "-" and Path(spec).expanduser().is_dir()]
    return select_shard(files, shard, roots=roots)
