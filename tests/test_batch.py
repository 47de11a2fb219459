"""The batch runner: failures don't stop the batch, skip-existing, overwrite, stop, jobs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from segtool.batch import EXIT_FAILED, EXIT_OK, RunOptions, run_batch
from segtool.errors import InputError


@dataclass(frozen=True)
class CopyTask:
    """Writes <name>.out with the input's text; inputs containing 'bad' fail like a user error."""

    out_dir: Path

    def planned_outputs(self, path):
        return {"copy": self.out_dir / (path.stem + ".out")}

    def run(self, path):
        text = path.read_text()
        if "bad" in text:
            raise InputError("bad content")
        if "bug" in text:
            raise ZeroDivisionError("oops")
        self.planned_outputs(path)["copy"].write_text(text.upper())
        return {"length": len(text)}


def _inputs(tmp_path, texts):
    paths = []
    for i, text in enumerate(texts):
        path = tmp_path / f"in{i}.txt"
        path.write_text(text)
        paths.append(path)
    out = tmp_path / "out"
    out.mkdir()
    return paths, CopyTask(out)


def test_bad_input_does_not_stop_the_others(tmp_path):
    paths, task = _inputs(tmp_path, ["ok", "bad", "fine"])
    seen = []
    summary = run_batch(paths, task, on_result=seen.append)
    assert [r.status for r in summary.results] == ["done", "failed", "done"]
    assert summary.results[1].error == "bad content"
    assert summary.exit_code == EXIT_FAILED
    assert (task.out_dir / "in2.out").read_text() == "FINE"
    assert seen == summary.results
    assert summary.results[0].figures == {"length": 2}


def test_unexpected_error_is_reported_as_bug_unless_debug(tmp_path):
    paths, task = _inputs(tmp_path, ["bug", "ok"])
    summary = run_batch(paths, task)
    assert "internal error" in summary.results[0].error and "ZeroDivisionError" in summary.results[0].error
    assert summary.results[1].status == "done"
    with pytest.raises(ZeroDivisionError):
        run_batch(paths, task, RunOptions(debug=True, overwrite=True))


def test_stop_on_first_error(tmp_path):
    paths, task = _inputs(tmp_path, ["ok", "bad", "fine"])
    summary = run_batch(paths, task, RunOptions(on_error="stop"))
    assert [r.status for r in summary.results] == ["done", "failed"]
    assert summary.not_started == 1


def test_existing_output_fails_without_overwrite_and_skip_existing_resumes(tmp_path):
    paths, task = _inputs(tmp_path, ["a", "b"])
    (task.out_dir / "in0.out").write_text("from an earlier run")
    summary = run_batch(paths, task)
    assert summary.results[0].status == "failed" and "--overwrite" in summary.results[0].error
    assert (task.out_dir / "in0.out").read_text() == "from an earlier run"
    resumed = run_batch(paths, task, RunOptions(skip_existing=True))
    assert [r.status for r in resumed.results] == ["skipped", "skipped"]
    assert resumed.exit_code == EXIT_OK
    redone = run_batch(paths, task, RunOptions(overwrite=True))
    assert [r.status for r in redone.results] == ["done", "done"]
    assert (task.out_dir / "in0.out").read_text() == "A"


def test_jobs_give_the_same_outputs(tmp_path):
    paths, task = _inputs(tmp_path, ["one", "bad", "three", "four"])
    summary = run_batch(paths, task, RunOptions(jobs=2))
    assert sorted(r.status for r in summary.results) == ["done", "done", "done", "failed"]
    assert sorted(p.name for p in task.out_dir.iterdir()) == ["in0.out", "in2.out", "in3.out"]
    assert (task.out_dir / "in3.out").read_text() == "FOUR"


def test_to_json_flattens_figures(tmp_path):
    paths, task = _inputs(tmp_path, ["abc"])
    record = run_batch(paths, task).results[0].to_json()
    assert record["status"] == "done" and record["length"] == 3
    assert record["outputs"] == {"copy": str(task.out_dir / "in0.out")}
    assert record["error"] is None


@dataclass(frozen=True)
class KillingTask(CopyTask):
    """Inputs containing 'kill' make the worker process kill itself, as the OOM killer would (SIGKILL)."""

    def run(self, path):
        if "kill" in path.read_text():
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        return super().run(path)


def test_worker_killed_by_the_os_fails_only_its_input(tmp_path):
    paths, copy = _inputs(tmp_path, ["one", "kill", "three", "kill again", "five", "six"])
    task = KillingTask(copy.out_dir)
    seen = []
    summary = run_batch(paths, task, RunOptions(jobs=2), on_result=seen.append)
    by_input = {Path(r.input).name: r for r in summary.results}
    assert len(summary.results) == 6 and summary.not_started == 0
    for name in ("in1.txt", "in3.txt"):
        assert by_input[name].status == "failed"
        assert "killed by SIGKILL" in by_input[name].error and "\n" not in by_input[name].error
    assert sorted(p.name for p in task.out_dir.iterdir()) == ["in0.out", "in2.out", "in4.out", "in5.out"]
    assert summary.exit_code == EXIT_FAILED and seen == summary.results


def test_killed_worker_with_stop_starts_nothing_new(tmp_path):
    paths, copy = _inputs(tmp_path, ["kill", "b", "c", "d", "e", "f"])
    summary = run_batch(paths, KillingTask(copy.out_dir), RunOptions(jobs=2, on_error="stop"))
    names = [Path(r.input).name for r in summary.results]
    failed = [Path(r.input).name for r in summary.results if r.status == "failed"]
    assert failed == ["in0.txt"]
    # The other worker may finish the one input it holds; nothing new starts after the failure is known.
    assert len(names) - names.index("in0.txt") - 1 <= 1
    assert summary.not_started == len(paths) - len(summary.results)


def test_debug_with_jobs_raises_the_workers_error(tmp_path):
    paths, task = _inputs(tmp_path, ["ok", "bug", "fine"])
    with pytest.raises(ZeroDivisionError):
        run_batch(paths, task, RunOptions(jobs=2, debug=True))


def test_run_options_refuse_an_unknown_on_error():
    with pytest.raises(ValueError, match="on_error"):
        RunOptions(on_error="ignore")
