"""Exceptions raised by segtool.

Every error a user can cause (a bad file, a bad option value, a model file that
is not a model) is a :class:`SegtoolError`. The command line prints these as a
single line naming the file and the problem; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

__all__ = ["SegtoolError", "InputError", "OutputError", "OutputExistsError", "ModelError", "first_line"]


class SegtoolError(Exception):
    """Base class for errors caused by the user's input or environment.

    The message should be one line that says what is wrong and, where it
    helps, what to do about it. The file it concerns is added by the caller
    (the CLI prefixes ``<file>: ``), so messages need not repeat it.
    """


class InputError(SegtoolError, ValueError):
    """An input image, mask, list of paths or option value cannot be used."""


class OutputError(SegtoolError, OSError):
    """An output cannot be written (exists already, folder not writable, disk full)."""


class OutputExistsError(OutputError):
    """An output exists and may not be replaced: it was there before, or another process wrote it meanwhile.

    With ``--skip-existing`` the batch runner counts the input as skipped
    ("written by another process"); without it the input fails.
    """


class ModelError(SegtoolError):
    """A model file is missing, truncated, foreign or incompatible with the input."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type name if the message is empty.

    Used wherever a library error (tifffile, torch, ...) is wrapped in a
    one-line :class:`SegtoolError` message.

    Examples
    --------
    >>> first_line(ValueError("bad value\\nmore detail")), first_line(KeyError())
    ('bad value', 'KeyError')
    """
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
