"""OutputOptions: built once by the CLI, held whole by every task, switched to overwrite only through one seam."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from helpers import invoke
from segtool.batch import item_task
from segtool.distributed.folder import with_absolute_paths
from segtool.outputs import OutputOptions, allowing_overwrite
from segtool.tasks.baseline import BaselineOptions, BaselineTask
from segtool.tasks.export import ExportTask
from segtool.tasks.predict import PredictTask


@pytest.fixture
def handed(monkeypatch):
    """The tasks the CLI hands to ``run_files`` (nothing is run)."""
    tasks = []
    for command in ("baseline", "export", "predict"):
        monkeypatch.setattr(f"segtool.cli.{command}.run_files", lambda paths, task, *a, **k: tasks.append(task))
    return tasks


@pytest.mark.parametrize("command, kind", [("baseline", BaselineTask), ("export", ExportTask), ("predict", PredictTask)])
@pytest.mark.parametrize("overwrite", [False, True])
def test_the_cli_hands_each_task_its_output_options_whole(tmp_path, sample_images, sample_masks, handed, command,
                                                          kind, overwrite):
    inputs = sample_masks[0] if command == "export" else sample_images[0]
    extra = ["--format", "csv"] if command == "export" else []
    args = [command, inputs, "-o", tmp_path / "out", "-q", *extra] + (["--overwrite"] if overwrite else [])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    [task] = handed
    assert type(task) is kind
    assert task.output == OutputOptions(folder=tmp_path / "out", overwrite=overwrite)
    assert not {"output_dir", "overwrite"} & {f.name for f in dataclasses.fields(task)}  # no flat copies


def test_without_o_outputs_go_beside_the_input(sample_images, handed):
    assert invoke("baseline", sample_images[0], "-q").exit_code == 0
    assert handed[0].output == OutputOptions()
    assert handed[0].planned_outputs(sample_images[0])["labels"].parent == sample_images[0].parent


def _task(out: Path, **changes) -> BaselineTask:
    options = dict(output=OutputOptions(out), options=BaselineOptions(min_size=7, split=True), save_overlay=True,
                   channel=1, z_spacing=2.5)
    return BaselineTask(**{**options, **changes})


def _all_but_output(task) -> dict:
    return {f.name: getattr(task, f.name) for f in dataclasses.fields(task) if f.name != "output"}


def test_item_task_lets_a_partly_done_input_replace_its_outputs_and_changes_nothing_else(tmp_path):
    task, image = _task(tmp_path), tmp_path / "img.tif"
    planned = task.planned_outputs(image)
    assert item_task(task, image, skip_existing=True) is task  # nothing there yet
    planned["overlay"].write_bytes(b"x")  # a run killed between its outputs
    assert item_task(task, image, skip_existing=False) is task
    redo = item_task(task, image, skip_existing=True)
    assert redo.output == OutputOptions(tmp_path, overwrite=True)
    assert _all_but_output(redo) == _all_but_output(task)
    assert task.output.overwrite is False  # the original is untouched
    planned["labels"].write_bytes(b"x")
    assert item_task(task, image, skip_existing=True) is task  # all there: a skip, decided elsewhere


def test_allowing_overwrite_switches_only_overwrite(tmp_path):
    task = _task(Path("relative/out"))
    switched = allowing_overwrite(task)
    assert switched.output == OutputOptions(Path("relative/out"), overwrite=True)
    assert _all_but_output(switched) == _all_but_output(task) and task.output.overwrite is False
    assert allowing_overwrite(switched) is switched  # already overwriting
    assert allowing_overwrite("not a task") == "not a task"  # nothing to switch


def test_workers_elsewhere_get_an_absolute_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = _task(Path("out"), output=OutputOptions(Path("out"), overwrite=True))
    remote = with_absolute_paths(task)
    assert remote.output == OutputOptions(tmp_path / "out", overwrite=True)
    assert _all_but_output(remote) == _all_but_output(task)
    assert with_absolute_paths(remote) is remote
