"""Where a task writes and whether it may replace what is there: :class:`OutputOptions`, held whole by every task.

The CLI builds one from ``-o`` and ``--overwrite``
(:attr:`segtool.cli.options.BatchOptions.outputs`); the runners switch
``overwrite`` on through :func:`allowing_overwrite` alone (a partly done input
redone under ``--skip-existing``, a Dask retry), never by a task's field name.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from segtool.inputs import output_path

__all__ = ["OutputOptions", "allowing_overwrite"]

T = TypeVar("T")


@dataclass(frozen=True)
class OutputOptions:
    """Where a task's outputs go and whether existing ones are replaced (``-o``, ``--overwrite``).

    Attributes
    ----------
    folder : Path or None
        Folder for the outputs; None writes each beside its input.
    overwrite : bool
        Replace existing outputs; otherwise an existing output is never replaced.

    Examples
    --------
    >>> OutputOptions(Path("out")).path(Path("data/img01.tif"), "_labels.tif")
    PosixPath('out/img01_labels.tif')
    >>> OutputOptions().path(Path("data/img01.tif"), "_labels.tif")
    PosixPath('data/img01_labels.tif')
    """

    folder: Path | None = None
    overwrite: bool = False

    def path(self, input_path: Path, suffix: str) -> Path:
        """The output with ``suffix`` for ``input_path`` (:func:`segtool.inputs.output_path`)."""
        return output_path(input_path, suffix, output_dir=self.folder)

    def absolute(self) -> OutputOptions:
        """These options with a relative ``folder`` made absolute (for workers started elsewhere)."""
        if self.folder is None or self.folder.is_absolute():
            return self
        return dataclasses.replace(self, folder=self.folder.absolute())


def allowing_overwrite(task: T) -> T:
    """A copy of ``task`` allowed to replace its outputs, all else unchanged.

    ``task`` holds its :class:`OutputOptions` as ``task.output``; a task
    without one, or one that already overwrites, comes back as it is. The
    copy is shallow (``copy.copy``), so it keeps what the task holds, frozen
    dataclasses included.

    Examples
    --------
    >>> @dataclasses.dataclass(frozen=True)
    ... class Example:
    ...     output: OutputOptions
    ...     jobs: int = 1
    >>> task = Example(OutputOptions(Path("out")), jobs=3)
    >>> allowing_overwrite(task)
    Example(output=OutputOptions(folder=PosixPath('out'), overwrite=True), jobs=3)
    >>> task.output.overwrite
    False
    """
    output = getattr(task, "output", None)
    if not isinstance(output, OutputOptions) or output.overwrite:
        return task
    clone = copy.copy(task)
    object.__setattr__(clone, "output", dataclasses.replace(output, overwrite=True))  # frozen dataclasses too
    return clone
