"""The Typer application every command module registers with.

Importing this module imports the package :mod:`segtool.cli` first, and so every command module: ``app`` has all
its commands registered (``from segtool.cli.application import app`` is what tests and benchmarks invoke). The
``segtool`` console script is :func:`segtool.cli.main`.
"""

from __future__ import annotations

import typer

from segtool import __version__

app = typer.Typer(
    name="segtool",
    help=(
        "Segment microscopy images from the command line: a classical baseline, U-Net training and tiled "
        "inference, exports for Fiji/QuPath/spreadsheets, and instance metrics.\n\n"
        "Inputs may be files, folders, glob patterns, or '-' to read a list of paths from stdin. Results go to "
        "stdout (paths, or JSON lines with --json); messages and progress go to stderr."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"segtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", help="Print the version and exit.", callback=_version, is_eager=True),
) -> None:
    """segtool: bioimage segmentation for folders of TIFFs."""
