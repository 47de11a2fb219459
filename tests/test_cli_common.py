"""Tests for segtool.cli.options: the batch options are gathered once from the parsed command line."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from segtool.cli.options import (
    BatchOptions,
    Jobs,
    JsonOut,
    OnError,
    OnErrorOpt,
    OutputDir,
    Overwrite,
    Quiet,
    batch_options,
)


def command_app(seen: list) -> typer.Typer:
    """A one-command app with some of the shared options (like export: no --block-size) and one of its own."""
    app = typer.Typer()

    @app.command()
    def run(ctx: typer.Context, output: OutputDir = None, overwrite: Overwrite = False, json_out: JsonOut = False,
            on_error: OnErrorOpt = OnError.skip, jobs: Jobs = 1, quiet: Quiet = False,
            degree: int = typer.Option(2, "--degree")) -> None:
        seen.append(batch_options(ctx))

    return app


def test_batch_options_take_the_given_values_and_defaults_for_the_rest(tmp_path):
    seen: list[BatchOptions] = []
    result = CliRunner().invoke(command_app(seen), ["-o", str(tmp_path), "--overwrite", "--json", "--on-error",
                                                    "STOP", "-j", "3", "--degree", "5"])
    assert result.exit_code == 0, result.output
    options = seen[0]
    assert options.output == Path(tmp_path) and options.overwrite and options.json_out and options.jobs == 3
    assert options.on_error == OnError.stop and not options.quiet
    # options the command does not have keep their defaults
    assert options.block_size is None and not options.big and options.cluster is None and not options.recursive
    assert BatchOptions(block_size=512).big


def test_batch_options_are_frozen():
    import dataclasses

    import pytest

    with pytest.raises(dataclasses.FrozenInstanceError):
        BatchOptions().jobs = 2  # type: ignore[misc]


def test_batch_options_give_the_runner_its_options():
    from segtool.batch import RunOptions

    batch = BatchOptions(on_error=OnError.stop, jobs=3, overwrite=True, skip_existing=True, debug=True, quiet=True)
    assert batch.run == RunOptions(on_error="stop", skip_existing=True, overwrite=True, jobs=3, debug=True)
    assert BatchOptions().run == RunOptions(on_error="skip", skip_existing=False, overwrite=False, jobs=1, debug=False)
