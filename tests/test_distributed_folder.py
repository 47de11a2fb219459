"""Folder mode on Dask (``--cluster``): same outputs, same batch guarantees, a worker may die.

The CLI runs are real processes (``python -m segtool``): the cluster's worker
processes, a scheduler started by the test and a worker killed mid-run are the
point. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segtool.cli.application import app
from segtool.distributed.cluster import ClusterSpec, connect, parse_cluster, worker_count
from segtool.errors import InputError
from segtool.io import write_labels
from segtool.outputs import OutputOptions
from segtool.synthetic import make_nuclei_image

SEGTOOL = [sys.executable, "-m", "segtool"]


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*SEGTOOL, *args], capture_output=True, text=True, timeout=timeout)


def _copies(tmp_path: Path, sample_images: list[Path], count: int, name: str = "in") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for i in range(count):
        shutil.copy(sample_images[i % len(sample_images)], folder / f"img{i:03d}.tif")
    return folder


def _same_files(a: Path, b: Path) -> list[str]:
    """Names of the files in ``a``; asserts ``b`` holds the same names with the same bytes."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return names


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ("local", ClusterSpec("local")),
        ("LOCAL:3", ClusterSpec("local", workers=3)),
        ("tcp://10.1.2.3:8786", ClusterSpec("address", address="tcp://10.1.2.3:8786")),
        ("tls://head:8786", ClusterSpec("address", address="tls://head:8786")),
    ],
)
def test_parse_cluster_accepts_documented_forms(text, expected):
    assert parse_cluster(text) == expected


def test_parse_cluster_scheduler_file(tmp_path):
    path = tmp_path / "scheduler.json"
    path.write_text('{"type": "Scheduler", "address": "tcp://127.0.0.1:8786"}')
    assert parse_cluster(str(path)) == ClusterSpec("scheduler_file", address=str(path))
    with pytest.raises(InputError, match="scheduler file not found"):
        parse_cluster(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("text", ["local:0", "local:x", "bogus", "8786", "", "tcp://nohost", "tcp://:8786", "tcp://h:port"])
def test_parse_cluster_rejects_other_values(text):
    with pytest.raises(InputError, match="--cluster"):
        parse_cluster(text)


@pytest.mark.parametrize("content", ["{}", "not json", '{"address": ""}'])
def test_parse_cluster_rejects_files_that_are_not_scheduler_files(tmp_path, content):
    path = tmp_path / "scheduler.json"
    path.write_text(content)
    with pytest.raises(InputError, match="not a Dask scheduler file"):
        parse_cluster(str(path))


def test_unreachable_scheduler_is_one_line_error():
    with pytest.raises(InputError, match="cannot reach the Dask scheduler"):
        with connect(ClusterSpec("address", address="tcp://127.0.0.1:9"), timeout=1):
            pass


# ------------------------------------------------------------------ CLI usage errors (in process)


def test_missing_dask_says_how_to_install(tmp_path, sample_images, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    result = CliRunner().invoke(app, ["baseline", str(sample_images[0]), "-o", str(tmp_path), "--cluster", "local:2"])
    assert result.exit_code == 2
    assert "pip install 'segtool[distributed]'" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cluster", "bogus"], "--cluster must be"),
        (["--cluster", "local:2", "--jobs", "2"], "--jobs runs local processes"),
    ],
)
def test_bad_cluster_options_exit_2(tmp_path, sample_images, extra, message):
    result = CliRunner().invoke(app, ["baseline", str(sample_images[0]), "-o", str(tmp_path), *extra])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ folder mode on a local cluster


@dataclass(frozen=True)
class _DiesOnce:
    """Writes <stem>.out per input (refusing to replace one, like segtool's tasks); ``bomb`` kills its worker once."""

    output: OutputOptions
    marker: Path

    def planned_outputs(self, path: Path) -> dict[str, Path]:
        return {"out": self.output.path(path, ".out")}

    def run(self, path: Path) -> dict:
        out = self.planned_outputs(path)["out"]
        if out.exists() and not self.output.overwrite:
            raise InputError(f"output exists: {out}")
        if path.stem == "bomb" and not self.marker.exists():
            self.marker.touch()
            os._exit(1)  # the worker process dies mid-task, as on a segfault or the OOM killer
        out.parent.mkdir(exist_ok=True)
        out.write_text(path.read_text())
        return {}


@pytest.mark.slow
def test_a_worker_dying_mid_task_loses_nothing_even_on_one_worker(tmp_path):
    from distributed import Client, LocalCluster

    from segtool.batch import run_batch
    from segtool.distributed.folder import cluster_runner

    names = [f"i{i:02d}" for i in range(40)]
    names[13] = "bomb"  # inside a group of several images: the images before it in the group are already written
    inputs = []
    for name in names:
        (tmp_path / f"{name}.txt").write_text(name)
        inputs.append(tmp_path / f"{name}.txt")
    task = _DiesOnce(OutputOptions(tmp_path / "out"), tmp_path / "died")
    # One worker, restarted by its nanny: the replacement must get the task again.
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        summary = run_batch(inputs, task, runner=cluster_runner(client))
    # The bomb really took its worker down; its task was re-run on the replacement, which replaced what
    # the first attempt had written for the bomb's group instead of failing on "output exists".
    assert (tmp_path / "died").exists()
    assert [r.status for r in summary.results].count("done") == 40, [r.error for r in summary.results if r.error]
    assert sorted(p.read_text() for p in (tmp_path / "out").iterdir()) == sorted(names)
    # Outside the cluster's retries the rule holds: an existing output fails the input.
    again = run_batch(inputs[:1], task)
    assert again.results[0].status == "failed" and "output exists" in again.results[0].error


@pytest.mark.slow
def test_relative_paths_reach_workers_as_absolute_paths(tmp_path, sample_images):
    _copies(tmp_path, sample_images, 2)
    proc = subprocess.run([*SEGTOOL, "baseline", "in", "-o", "out", "--json", "--cluster", "local:1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(r["input"] for r in records) == ["in/img000.tif", "in/img001.tif"]  # reported as typed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img000_labels.tif", "img001_labels.tif"]
    assert all(Path(r["outputs"]["labels"]).parent == tmp_path / "out" for r in records)


@pytest.mark.slow
def test_baseline_on_local_cluster_equals_in_process_run(tmp_path, sample_images):
    folder = _copies(tmp_path, sample_images, 6)
    (folder / "broken.tif").write_bytes(b"not a tiff")
    alone = _run(["baseline", str(folder), "-o", str(tmp_path / "alone"), "--json", "--save-background"])
    dask = _run(["baseline", str(folder), "-o", str(tmp_path / "dask"), "--json", "--save-background", "--cluster", "local:2"])
    # One bad file: exit 1 in both, the other six done, byte-identical outputs.
    assert alone.returncode == dask.returncode == 1, dask.stderr
    records = [json.loads(line) for line in dask.stdout.splitlines()]
    assert sorted(r["status"] for r in records) == ["done"] * 6 + ["failed"]
    assert [r["input"] for r in records if r["status"] == "failed"] == [str(folder / "broken.tif")]
    assert "broken.tif" in dask.stderr and "Traceback" not in dask.stderr
    assert "local cluster with 2 workers" in dask.stderr and "dashboard http://127.0.0.1:" in dask.stderr
    names = _same_files(tmp_path / "alone", tmp_path / "dask")
    assert len(names) == 12  # labels + background for six images
    by_input = {r["input"]: r for r in records}
    for line in alone.stdout.splitlines():
        expected = json.loads(line)
        got = by_input[expected["input"]]
        same = lambda record: {k: v for k, v in record.items() if k not in ("seconds", "outputs")}  # noqa: E731
        assert same(got) == same(expected)

    # Existing results: refused without --overwrite, skipped with --skip-existing (checked on the client).
    again = _run(["baseline", str(folder), "-o", str(tmp_path / "dask"), "--json", "--cluster", "local:2"])
    assert again.returncode == 1
    assert {json.loads(line)["status"] for line in again.stdout.splitlines()} == {"failed"}
    assert "use --overwrite or --skip-existing" in again.stderr
    resumed = _run(["baseline", str(folder), "-o", str(tmp_path / "dask"), "--json", "--cluster", "local:2", "--skip-existing",
                    "--save-background"])
    statuses = sorted(json.loads(line)["status"] for line in resumed.stdout.splitlines())
    assert statuses == ["failed"] + ["skipped"] * 6
    _same_files(tmp_path / "alone", tmp_path / "dask")


@pytest.mark.slow
def test_on_error_stop_on_cluster_starts_nothing_new(tmp_path, sample_images):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_broken.tif").write_bytes(b"junk")
    for i in range(30):
        shutil.copy(sample_images[i % len(sample_images)], folder / f"b{i:03d}.tif")
    proc = _run(["baseline", str(folder), "-o", str(tmp_path / "out"), "--json", "--cluster", "local:1", "--on-error", "stop"])
    assert proc.returncode == 1
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records[0]["status"] == "failed"
    # One worker thread and nothing queued behind the broken file: nothing else started.
    assert len(records) == 1
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_predict_on_local_cluster_equals_in_process_run(tmp_path, sample_images):
    folder = _copies(tmp_path, sample_images, 3)
    # Same thread count on both sides: PyTorch's sums may be ordered differently with another.
    alone = _run(["predict", str(folder), "-o", str(tmp_path / "alone"), "--threads", "1", "-q"])
    dask = _run(["predict", str(folder), "-o", str(tmp_path / "dask"), "--threads", "1", "-q", "--cluster", "local:2"])
    assert alone.returncode == dask.returncode == 0, dask.stderr
    assert len(_same_files(tmp_path / "alone", tmp_path / "dask")) == 3


@pytest.mark.slow
def test_export_on_local_cluster_equals_in_process_run(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    for seed in range(3):
        _, truth = make_nuclei_image((160, 200), n_nuclei=12, seed=seed)
        write_labels(labels / f"s{seed}_labels.tif", truth)
    args = ["export", str(labels), "--format", "roi", "--format", "geojson", "--format", "csv", "-q"]
    alone = _run([*args, "-o", str(tmp_path / "alone")])
    dask = _run([*args, "-o", str(tmp_path / "dask"), "--cluster", "local:2"])
    assert alone.returncode == dask.returncode == 0, dask.stderr
    assert len(_same_files(tmp_path / "alone", tmp_path / "dask")) == 9


# ------------------------------------------------------------------ a real scheduler, and a worker that dies


def _dask_cli(*args: str, log: Path) -> subprocess.Popen:
    # "python -m distributed.cli.*" is what the `dask scheduler` / `dask worker` commands run.
    handle = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", *args], stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _worker_count(scheduler_file: Path) -> int:
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file), timeout=10) as client:
        return len(client.scheduler_info()["workers"])


@pytest.mark.slow
def test_real_scheduler_survives_a_killed_worker(tmp_path, sample_images):
    folder = _copies(tmp_path, sample_images, 40)
    scheduler_file = tmp_path / "scheduler.json"
    processes = []
    try:
        processes.append(
            _dask_cli("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                      "--scheduler-file", str(scheduler_file), log=tmp_path / "scheduler.log")
        )
        _wait_for(scheduler_file.exists, 60, "the scheduler file")
        for i in range(2):
            # --no-nanny: nothing restarts a killed worker, so its tasks must move to the other one.
            processes.append(
                _dask_cli("distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                          "--no-nanny", "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}",
                          log=tmp_path / f"worker{i}.log")
            )
        _wait_for(lambda: _worker_count(scheduler_file) == 2, 60, "two workers")
        victim = processes[1]

        out = tmp_path / "out"
        run = subprocess.Popen(
            [*SEGTOOL, "baseline", str(folder), "-o", str(out), "--json", "--split", "--cluster", str(scheduler_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        # Kill one worker once results start to arrive: it has tasks queued and running then.
        _wait_for(lambda: out.exists() and len(list(out.glob("*_labels.tif"))) >= 3, 120, "first results")
        os.kill(victim.pid, signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        records = [json.loads(line) for line in stdout.splitlines()]
        assert len(records) == 40 and {r["status"] for r in records} == {"done"}
        # the killed worker is gone for good (no nanny); the scheduler may notice the dead connection a moment
        # after the last result arrived, so wait for it rather than racing it
        _wait_for(lambda: _worker_count(scheduler_file) == 1, 60, "the scheduler to drop the killed worker")
        _wait_for(lambda: "Remove worker" in (tmp_path / "scheduler.log").read_text(), 30, "'Remove worker' in the scheduler log")
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    alone = _run(["baseline", str(folder), "-o", str(tmp_path / "alone"), "--split", "-q"])
    assert alone.returncode == 0
    # SIGKILL lets nothing clean up: a write the victim had begun stays behind as its hidden temporary file
    # (".<name>.<hex>.part"), never as a result; the retry on the other worker wrote the real file.
    leftovers = [p for p in out.iterdir() if p.name.startswith(".")]
    assert all(p.name.endswith(".part") and (out / p.name[1:].rsplit(".", 2)[0]).exists() for p in leftovers), leftovers
    for p in leftovers:
        p.unlink()
    assert len(_same_files(tmp_path / "alone", out)) == 40
    assert not [p for p in out.iterdir() if not p.name.endswith("_labels.tif")]  # results only


def test_a_local_cluster_leaves_the_environment_as_it_found_it():
    """Dask sets worker variables (OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_...) in the starting process; they go."""
    before = dict(os.environ)
    with connect(parse_cluster("local:1")) as client:
        assert worker_count(client) == 1
    assert dict(os.environ) == before
