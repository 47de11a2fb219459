"""The Dask cluster of one command: ``--cluster`` parsed and checked, then started or joined for the run.

Used by :func:`segtool.cli.run.run_files` (imported there when a command runs, after both modules are loaded).
"""

from __future__ import annotations

import sys
from contextlib import ExitStack

import typer

from segtool.batch import EXIT_INTERRUPTED
from segtool.errors import InputError

__all__ = ["cluster_for_run", "connect_for_run"]


def cluster_for_run(cluster: str | None, *, big: bool, jobs: int):
    """The parsed ``--cluster`` (``local`` for big-image mode without one), or None.

    Raises
    ------
    SegtoolError
        When it cannot be used (the caller exits 2 with the message).
    """
    if cluster is None and not big:
        return None
    from segtool.distributed.cluster import parse_cluster, require_distributed

    if jobs > 1:
        raise InputError("--jobs runs local processes; with --cluster or --block-size give the workers as --cluster local:N")
    require_distributed()
    return parse_cluster(cluster or "local")


def connect_for_run(stack: ExitStack, spec, *, quiet: bool):
    """Start or join the cluster for the rest of the command; say where its dashboard is.

    Raises
    ------
    SegtoolError
        When the cluster cannot be reached or started (the caller exits 2).
    """
    from segtool.distributed.cluster import connect, dashboard_link

    try:
        client = stack.enter_context(connect(spec))
    except KeyboardInterrupt:
        print("segtool: interrupted while connecting to the cluster", file=sys.stderr, flush=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if not quiet:
        link = dashboard_link(client)
        where = f"; dashboard {link}" if link else ""
        print(f"segtool: running on a {spec.describe()}{where}", file=sys.stderr, flush=True)
    return client
