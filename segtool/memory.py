"""The memory guard: refuse an image before reading it when the command would not fit in memory.

A small compressed file can decode to an image far larger than the machine's
memory (a 7.7 MB tiled zlib TIFF of 60000 x 60000 uint16 holds 6.7 GiB), and a
command then needs several float copies of it on top. The readers in
:mod:`segtool.io` take a :class:`MemoryBudget`, compare the size the file's
header declares, plus the working memory of the command, with the budget's
limit, and raise a one-line :class:`~segtool.errors.InputError` naming the size
and the way out before any pixel is decoded.

The limit comes from ``--max-memory`` (:func:`parse_memory_limit`); by default
it is :data:`DEFAULT_SHARE` of the memory available now (``MemAvailable`` in
``/proc/meminfo``, capped by a cgroup limit when the process runs in a
container), divided among ``--jobs`` workers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segtool.errors import InputError

__all__ = [
    "DEFAULT_SHARE",
    "FIXED_BYTES",
    "WORKING_BYTES",
    "MemoryBudget",
    "available_memory",
    "default_memory_limit",
    "parse_memory_limit",
    "format_bytes",
    "check_memory",
    "return_freed_memory_promptly",
]

#: Share of the available memory a command may plan to use by default (the
#: estimates below are close but not exact; the rest is headroom).
DEFAULT_SHARE = 0.75

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

#: Working memory per pixel of the 2-D plane, in bytes, on top of the decoded
#: file, by command: the peak-RSS growth measured by ``python bench/bench_memory.py
#: --size 3000`` (3000 x 3000 uint16 image, 2000 x 2000 for predict, every extra
#: output on; 2-core AMD EPYC, shared) was baseline 40.7, --split 92.5, export 37.5,
#: measure 0.6 and evaluate 8.0; these values lie above with a margin (measure's
#: grows with the object count). predict: its network tiles are sized under a memory
#: budget (``segtool.pipeline.options.TILE_MEMORY``), so its working memory is a
#: fixed part (:data:`FIXED_BYTES`) plus a part per pixel. ``bench_memory.py
#: --commands predict`` at --size 3000 and 4500 (in memory, bfloat16, 2-core Intel
#: Xeon, issue #40) measured 231.0 B/px on 2000^2 and 108.3 B/px on 3000^2, i.e.
#: 924 and 975 MB: 883 MB fixed plus 10 B/px; 40 B/px and 1 GiB lie above both.
WORKING_BYTES = {
    "baseline": 48.0,
    "baseline --split": 104.0,
    "predict": 40.0,
    "export": 48.0,
    "measure": 12.0,
    "evaluate": 20.0,
}

#: Working memory of a command that does not grow with the image, in bytes (see :data:`WORKING_BYTES`).
FIXED_BYTES = {"predict": float(2**30)}


@dataclass(frozen=True)
class MemoryBudget:
    """How much memory one image may take in a command, and what the command needs per pixel.

    Attributes
    ----------
    limit : int or None
        Bytes the command may use for one image; None = no limit.
    bytes_per_pixel : float
        Working memory of the command per pixel of the 2-D plane it segments
        (float copies, masks, labels), on top of the decoded file.
    command : str
        Command name for the message (``"baseline"``).
    way_out : str
        What to do instead, e.g. ``"process it in blocks with --block-size 4096"``.
    streamed_above : int or None
        Pixels above which the command streams the image (bounded memory), so
        that only the decoded file counts; None = never.
    fixed_bytes : float
        Working memory that does not grow with the image (predict's network
        tiles), counted with ``bytes_per_pixel`` when the image is not streamed.
    """

    limit: int | None
    bytes_per_pixel: float = 0.0
    command: str = "segtool"
    way_out: str = ""
    streamed_above: int | None = None
    fixed_bytes: float = 0.0


def available_memory(
    meminfo: str | Path = "/proc/meminfo", cgroup_root: str | Path = "/sys/fs/cgroup"
) -> int | None:
    """Bytes of memory available to this process now, or None when unknown.

    ``MemAvailable`` of ``/proc/meminfo``, lowered to what is left under a
    cgroup (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``) when one is set.

    Examples
    --------
    >>> available_memory("/no/such/meminfo", "/no/such/cgroup") is None
    True
    """
    available = None
    try:
        match = re.search(r"^MemAvailable:\s+(\d+)\s*kB", Path(meminfo).read_text(), re.MULTILINE)
        if match:
            available = int(match.group(1)) * 1024
    except OSError:
        pass
    root = Path(cgroup_root)
    for limit_file, usage_file in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit_text = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if not limit_text.isdigit() or int(limit_text) >= 2**60:  # "max", or v1's "no limit" sentinel
            continue
        left = max(int(limit_text) - usage, 0)
        available = left if available is None else min(available, left)
        break
    return available


def default_memory_limit(jobs: int = 1, *, available: int | None = None) -> int | None:
    """:data:`DEFAULT_SHARE` of the available memory, shared among ``jobs`` workers; None when unknown.

    Examples
    --------
    >>> default_memory_limit(2, available=8 * 2**30) / 2**30
    3.0
    """
    available = available_memory() if available is None else available
    if available is None:
        return None
    return int(available * DEFAULT_SHARE / max(int(jobs), 1))


def parse_memory_limit(text: str | None, *, jobs: int = 1, available: int | None = None) -> int | None:
    """Bytes from a ``--max-memory`` value; None means no limit.

    Parameters
    ----------
    text : str or None
        ``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"300MB"`` (binary units:
        K = 1024 bytes), a plain number of bytes, ``"60%"`` of the available
        memory, ``"none"`` (no limit), or None for the default
        (:func:`default_memory_limit`). A percentage and the default are
        shared among ``jobs`` workers; an absolute size applies to each.
    jobs : int, optional
        Worker processes that will read images at the same time.
    available : int, optional
        Available memory in bytes (default: :func:`available_memory`).

    Raises
    ------
    InputError
        If ``text`` is not a size.

    Examples
    --------
    >>> parse_memory_limit("1.5G")
    1610612736
    >>> parse_memory_limit("50%", available=2**30, jobs=2)
    268435456
    >>> parse_memory_limit("none") is None
    True
    """
    if text is None:
        return default_memory_limit(jobs, available=available)
    value = text.strip().upper().replace(" ", "")
    if value in ("NONE", "OFF", "0"):
        return None
    if value.endswith("%"):
        try:
            share = float(value[:-1])
        except ValueError:
            share = math.nan
        if not 0 < share <= 100:
            raise InputError(f"--max-memory {text!r}: a percentage must be between 0 and 100")
        available = available_memory() if available is None else available
        if available is None:
            raise InputError(f"--max-memory {text!r}: the available memory is unknown here; give a size such as 8G")
        return int(available * share / 100 / max(int(jobs), 1))
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)([KMGT]?)(I?B)?", value)
    if not match or (match.group(3) and not match.group(2) and match.group(3) != "B"):
        raise InputError(f"--max-memory {text!r} is not a size: give e.g. 8G, 512M, 60% or none")
    size = float(match.group(1)) * _UNITS[match.group(2)]
    if size < 1:
        raise InputError(f"--max-memory {text!r} must be at least one byte (or 'none')")
    return int(size)


def format_bytes(n: float) -> str:
    """Size for messages: ``"6.7 GiB"``, ``"512 MiB"``.

    Examples
    --------
    >>> format_bytes(7.2e9), format_bytes(3 * 2**20), format_bytes(100)
    ('6.7 GiB', '3 MiB', '100 bytes')
    """
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.0f} MiB"
    if n >= 2**10:
        return f"{n / 2**10:.0f} KiB"
    return f"{int(n)} bytes"


def check_memory(shape: tuple[int, ...], dtype: np.dtype | str, plane_pixels: int, budget: MemoryBudget | None) -> None:
    """Refuse an image whose decoded size plus the command's working memory exceeds the budget.

    Parameters
    ----------
    shape, dtype
        What the file's header declares (the whole series: every plane and
        channel, as the reader decodes them all).
    plane_pixels : int
        Pixels of the 2-D plane the command works on.
    budget : MemoryBudget or None
        None, or a budget without limit, accepts everything.

    Raises
    ------
    InputError
        One line: the image's size, the estimate, the limit and the way out.

    Examples
    --------
    >>> budget = MemoryBudget(2**30, bytes_per_pixel=20, command="baseline", way_out="use --block-size 4096")
    >>> check_memory((1000, 1000), "uint16", 10**6, budget)
    >>> check_memory((60000, 60000), "uint16", 60000**2, budget)
    Traceback (most recent call last):
    ...
    segtool.errors.InputError: image is 60000x60000 uint16 (6.7 GiB decoded); baseline would need about 73.8 GiB, over the memory limit of 1.0 GiB (--max-memory): use --block-size 4096
    """
    if budget is None or budget.limit is None:
        return
    itemsize = np.dtype(dtype).itemsize
    decoded = float(np.prod([float(n) for n in shape])) * itemsize
    streamed = budget.streamed_above is not None and plane_pixels > budget.streamed_above
    need = decoded + (0.0 if streamed else float(plane_pixels) * budget.bytes_per_pixel + budget.fixed_bytes)
    if need <= budget.limit:
        return
    size = "x".join(str(int(n)) for n in shape)
    detail = f"{budget.command} would need about {format_bytes(need)}" if need > decoded * 1.05 else "reading it would need all of it"
    way_out = f": {budget.way_out}" if budget.way_out else ""
    raise InputError(
        f"image is {size} {np.dtype(dtype).name} ({format_bytes(decoded)} decoded); {detail}, "
        f"over the memory limit of {format_bytes(budget.limit)} (--max-memory){way_out}"
    )


def return_freed_memory_promptly(threshold: int = 16 * 2**20) -> bool:
    """Have glibc serve allocations of ``threshold`` bytes or more from their own mappings (Linux only).

    glibc raises its mmap threshold each time a large block is freed (up to
    32 MiB), so the next buffers come from the heap, where a freed block
    between live ones is never given back: band mode on a large image then
    holds 0.15-0.25 GiB it no longer uses. A fixed threshold returns those
    blocks at each free, at the price of mapping them again (page faults):
    8192^2 in bands, 1.60 GiB peak RSS in 26.9 s without, 1.44 GiB in 30.5 s
    at 16 MiB, 1.38 GiB in 32.4 s at 1 MiB (BENCHMARKS.md, "Memory"); and
    it limits glibc to two arenas, whose freed blocks the threads then share. So
    the band schedule sets it (where memory is what it is for), not the
    in-memory one (3000^2: 22 % slower at 1 MiB). It lasts for the process
    and changes no result.

    Returns
    -------
    bool
        Whether the threshold was set (False off glibc).

    Examples
    --------
    >>> isinstance(return_freed_memory_promptly(), bool)
    True
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    m_mmap_threshold, m_arena_max = -3, -8  # <malloc.h>
    # Each thread that allocates (the network's, the labelling's, the reader's) otherwise gets an arena of its own,
    # and each keeps its own freed blocks: with two, 8192^2 enlarged 1.375x peaked 1.41-1.49 GiB in three runs
    # against 1.45-1.52 GiB in two without (BENCHMARKS.md, "Band mode in bounded memory").
    mallopt(m_arena_max, 2)
    return bool(mallopt(m_mmap_threshold, int(threshold)))
