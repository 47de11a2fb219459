"""Connecting to a Dask cluster from the ``--cluster`` option.

``--cluster`` takes one of:

- ``local`` or ``local:N`` — start a :class:`distributed.LocalCluster` on this
  machine with N worker processes (default: one per core), one thread each, so
  N images (or blocks) are processed at once without the workers' PyTorch and
  BLAS threads fighting over the same cores;
- ``tcp://HOST:PORT`` (or ``tls://``, ``ucx://``, ``ws://``) — the address of a
  running ``dask scheduler``, e.g. one started by ``dask-jobqueue`` on Slurm;
- the path of a scheduler file (``dask scheduler --scheduler-file FILE``),
  the usual way to meet a scheduler on an HPC site's shared file system.

Dask is an optional dependency (``pip install 'segtool[distributed]'``);
:func:`require_distributed` turns its absence into a one-line error that says
how to install it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtool.errors import InputError, first_line

__all__ = [
    "ClusterSpec",
    "parse_cluster",
    "require_distributed",
    "connect",
    "worker_count",
    "dashboard_link",
    "threads_per_local_worker",
    "INSTALL_HINT",
]

INSTALL_HINT = "pip install 'segtool[distributed]'"
_REMOTE_SCHEMES = ("tcp://", "tls://", "ucx://", "ws://", "wss://")
# scheme://host:port, the host a name, IPv4 or [IPv6] address.
_ADDRESS = re.compile(r"^[a-z]+://(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+):(\d{1,5})/?$")


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``--cluster`` value.

    Attributes
    ----------
    kind : {"local", "address", "scheduler_file"}
    workers : int or None
        Worker processes of a local cluster (None: one per core).
    address : str or None
        Scheduler address, or the scheduler file's path.
    """

    kind: str
    workers: int | None = None
    address: str | None = None

    def describe(self) -> str:
        if self.kind == "local":
            count = self.workers or _cores()
            return f"local cluster with {count} worker{'s' if count != 1 else ''}"
        if self.kind == "scheduler_file":
            return f"scheduler from {self.address}"
        return f"scheduler at {self.address}"


def parse_cluster(text: str) -> ClusterSpec:
    """Parse ``local``, ``local:N``, a scheduler address or a scheduler file.

    Raises
    ------
    InputError
        For anything else, naming the accepted forms.

    Examples
    --------
    >>> parse_cluster("local:2")
    ClusterSpec(kind='local', workers=2, address=None)
    >>> parse_cluster("tcp://10.0.0.5:8786").kind
    'address'
    """
    value = text.strip()
    lowered = value.lower()
    if lowered == "local":
        return ClusterSpec("local")
    if lowered.startswith("local:"):
        count = value.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"--cluster local:N needs a positive number of workers, got {text!r}")
        return ClusterSpec("local", workers=int(count))
    if lowered.startswith(_REMOTE_SCHEMES):
        if not _ADDRESS.match(value):
            raise InputError(f"--cluster: a scheduler address needs a host and a port, like tcp://HOST:8786; got {text!r}")
        return ClusterSpec("address", address=value)
    if value.endswith(".json") or Path(value).is_file():
        _check_scheduler_file(Path(value))
        return ClusterSpec("scheduler_file", address=value)
    raise InputError(
        f"--cluster must be 'local', 'local:N', a scheduler address like tcp://HOST:8786, or a scheduler file; got {text!r}"
    )


def _check_scheduler_file(path: Path) -> None:
    """A scheduler file must exist and name the scheduler's address (``dask scheduler --scheduler-file``)."""
    if not path.is_file():
        raise InputError(f"--cluster: scheduler file not found: {path}")
    try:
        address = json.loads(path.read_text(encoding="utf-8")).get("address")
    except (OSError, ValueError, AttributeError):
        address = None
    if not isinstance(address, str) or not address:
        raise InputError(f"--cluster: {path} is not a Dask scheduler file (no \"address\" in it)")


def threads_per_local_worker(spec: ClusterSpec) -> int | None:
    """CPU threads each worker of a local cluster may use (cores / workers); None for remote clusters."""
    if spec.kind != "local":
        return None
    return max(1, _cores() // (spec.workers or _cores()))


def require_distributed() -> None:
    """Raise a one-line :class:`InputError` unless dask.distributed can be imported."""
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise InputError(f"this needs Dask, which is not installed: {INSTALL_HINT}") from None


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextmanager
def connect(spec: ClusterSpec, *, timeout: float = 30.0) -> Iterator[Any]:
    """Start or join the cluster ``spec`` describes; yield a ``distributed.Client``.

    The client becomes Dask's default scheduler inside the ``with`` block, so
    dask arrays computed there run on the cluster. A local cluster is shut down
    on exit; a remote one is only disconnected from.

    Raises
    ------
    InputError
        If Dask is not installed or the scheduler cannot be reached in ``timeout`` seconds.
    """
    require_distributed()
    from distributed import Client, LocalCluster

    # Starting a local cluster sets variables in this process's environment for its worker processes (one BLAS
    # thread, a malloc trim threshold, ...); they are put back on exit, or every later subprocess and torch run of
    # the caller (the napari plugin, a test session) would inherit them.
    saved = dict(os.environ)
    cluster = client = None
    try:
        if spec.kind == "local":
            # One thread per worker process: each task is a whole image or block,
            # and the workers' torch/BLAS threads would otherwise oversubscribe.
            cluster = LocalCluster(
                n_workers=spec.workers or _cores(),
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                host="127.0.0.1",
                # Workers' own log lines (memory warnings, restarts) would print raw on stderr;
                # segtool reports what matters about each input in its one line.
                silence_logs=logging.CRITICAL,
            )
            client = Client(cluster)
        elif spec.kind == "scheduler_file":
            client = Client(scheduler_file=spec.address, timeout=timeout)
        else:
            client = Client(spec.address, timeout=timeout)
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise InputError(f"no Dask worker joined the {spec.describe()} within {timeout:g} s") from None
    except BaseException as err:  # Ctrl-C included: never leave a half-started cluster behind
        _close(client, cluster)
        _restore_environment(saved)
        if isinstance(err, (KeyboardInterrupt, SystemExit, InputError)):
            raise
        raise InputError(f"cannot reach the Dask scheduler ({spec.describe()}): {first_line(err) or type(err).__name__}") from None
    try:
        yield client
    finally:
        _close(client, cluster)
        _restore_environment(saved)


def _restore_environment(saved: dict[str, str]) -> None:
    """Put ``os.environ`` back to ``saved``: variables added since removed, changed ones restored."""
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def _close(client: Any, cluster: Any) -> None:
    for thing in (client, cluster):
        if thing is not None:
            try:
                thing.close()
            except Exception:  # already gone; closing is best effort
                pass


def worker_count(client: Any) -> int:
    """Worker threads the cluster has now (at least 1)."""
    threads = client.nthreads()
    return max(1, sum(threads.values()))


def dashboard_link(client: Any) -> str | None:
    """The dashboard address, or None when the dashboard is not running (bokeh missing)."""
    try:
        info = client.scheduler_info()
        port = info.get("services", {}).get("dashboard")
    except Exception:  # a scheduler that does not say: no link, no failure
        return None
    if not port:
        return None
    return client.dashboard_link
