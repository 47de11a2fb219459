"""Putting a finished temporary file in place without replacing one that appeared meanwhile.

:func:`segtool.io.atomic_output` writes every output to a hidden ``.part``
file first. Several processes may work on the same folder (terminals, array
jobs, ``--skip-existing`` resumes), so between the check that an output is
free and the end of the write another process may have published the same
output. ``os.replace`` would silently put this process's file over it;
:func:`publish_new` refuses instead, atomically, on Linux and macOS:

- a hard link from the temporary file to the destination fails with
  ``EEXIST`` when the destination exists (the check and the creation are one
  system call, on local disks and on NFS alike); the temporary name is then
  unlinked. A process killed between the two keeps a complete result and
  leaves only its hidden ``.part`` file behind;
- on file systems without hard links (FAT, exFAT, some SMB shares) the name
  is claimed with ``O_CREAT | O_EXCL`` (an empty file) and the temporary file
  renamed over the claim. A process killed between those two steps would
  leave an empty file under the final name, so the link is preferred.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from segtool.errors import OutputExistsError

__all__ = ["publish_new"]

# Errors meaning "this file system has no hard links", as opposed to "the name is taken".
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EACCES}


def publish_new(temp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished file ``temp`` to ``path``, unless ``path`` exists.

    Parameters
    ----------
    temp : path-like
        The complete file, in the same folder as ``path``.
    path : path-like
        Destination; must not exist.

    Raises
    ------
    OutputExistsError
        If ``path`` exists, however recently it appeared; ``temp`` is left for
        the caller to remove and ``path`` is untouched.
    OSError
        If the file system refuses otherwise (permissions, disk full).

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / ".a.part").write_text("mine")
    >>> publish_new(folder / ".a.part", folder / "a.txt")
    >>> (folder / "a.txt").read_text(), (folder / ".a.part").exists()
    ('mine', False)
    >>> _ = (folder / ".b.part").write_text("late")
    >>> publish_new(folder / ".b.part", folder / "a.txt")
    Traceback (most recent call last):
    ...
    segtool.errors.OutputExistsError: ...a.txt: output exists (written meanwhile by another process?); use --overwrite to replace it
    >>> (folder / "a.txt").read_text()
    'mine'
    >>> import shutil; shutil.rmtree(folder)
    """
    temp, path = Path(temp), Path(path)
    try:
        os.link(temp, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError as err:
        if err.errno not in _NO_HARD_LINKS:
            raise
        _claim_then_rename(temp, path)
        return
    os.unlink(temp)


def _claim_then_rename(temp: Path, path: Path) -> None:
    """The fallback without hard links: create ``path`` exclusively, then rename ``temp`` over that claim."""
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise _exists(path) from None
    os.close(handle)
    try:
        os.replace(temp, path)
    except BaseException:
        os.unlink(path)  # give the name back rather than leave an empty file that looks like a result
        raise


def _exists(path: Path) -> OutputExistsError:
    return OutputExistsError(f"{path}: output exists (written meanwhile by another process?); use --overwrite to replace it")
