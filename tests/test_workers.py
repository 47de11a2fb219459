"""Many workers on one folder: outputs never replaced, races counted as skips, --shard, every output listed."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers import invoke
from segtool import publish
from segtool.batch import EXIT_FAILED, EXIT_OK, WRITTEN_ELSEWHERE, RunOptions, run_batch
from segtool.errors import OutputExistsError
from segtool.io import atomic_output, read_labels, write_labels
from segtool.outputs import OutputOptions
from segtool.shard import Shard, parse_shard, select_shard

SEGTOOL = [sys.executable, "-m", "segtool"]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- publishing


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_file_that_appears_meanwhile_is_never_replaced(tmp_path, monkeypatch, hard_links):
    if not hard_links:  # a file system without hard links (FAT, some SMB shares): the O_EXCL claim instead
        def no_link(src, dst):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(publish.os, "link", no_link)
    target = tmp_path / "img_labels.tif"
    with pytest.raises(OutputExistsError, match="output exists"):
        with atomic_output(target) as temp:
            temp.write_bytes(b"second writer")
            target.write_bytes(b"first writer")  # another process publishes while this one writes
    assert target.read_bytes() == b"first writer"
    assert _leftovers(tmp_path) == []  # the loser's temporary file is gone
    with atomic_output(tmp_path / "free.tif") as temp:  # and a free name is still published
        temp.write_bytes(b"data")
    assert (tmp_path / "free.tif").read_bytes() == b"data"
    assert _leftovers(tmp_path) == []


def test_overwrite_still_replaces(tmp_path):
    target = tmp_path / "a.tif"
    target.write_bytes(b"old")
    with atomic_output(target, overwrite=True) as temp:
        temp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


# --------------------------------------------------------------------------- races in the batch runner


@dataclass(frozen=True)
class RacedTask:
    """Writes <stem>_labels.tif; while it writes, 'another process' publishes the same output first."""

    output: OutputOptions

    @property
    def out_dir(self) -> Path:
        return self.output.folder

    def planned_outputs(self, path):
        return {"labels": self.output.path(path, "_labels.tif")}

    def run(self, path):
        target = self.planned_outputs(path)["labels"]
        labels = np.zeros((8, 8), np.uint16)
        labels[2:5, 2:5] = 1
        with atomic_output(target, overwrite=self.output.overwrite) as temp:
            tifffile.imwrite(temp, labels)
            target.write_bytes(b"the other process's result")
        return {"objects": 1}


def _raced(tmp_path, count=3):
    paths = []
    for i in range(count):
        paths.append(tmp_path / f"in{i}.txt")
        paths[-1].write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    return paths, RacedTask(OutputOptions(out))


@pytest.mark.parametrize("jobs", [1, 2])
def test_race_with_skip_existing_is_a_skip(tmp_path, jobs):
    paths, task = _raced(tmp_path)
    summary = run_batch(paths, task, RunOptions(skip_existing=True, jobs=jobs))
    assert [r.status for r in summary.results] == ["skipped"] * 3
    assert {r.reason for r in summary.results} == {WRITTEN_ELSEWHERE}
    assert summary.exit_code == EXIT_OK
    record = next(r for r in summary.results if r.input == str(paths[0])).to_json()  # --jobs 2: any order
    assert record["status"] == "skipped" and record["reason"] == "written by another process"
    assert record["outputs"] == {"labels": str(task.out_dir / "in0_labels.tif")}
    for path in task.out_dir.iterdir():
        assert path.read_bytes() == b"the other process's result"
    assert _leftovers(task.out_dir) == []


def test_race_without_skip_existing_fails_and_keeps_the_first_file(tmp_path):
    paths, task = _raced(tmp_path, count=2)
    summary = run_batch(paths, task)
    assert [r.status for r in summary.results] == ["failed", "failed"]
    assert "output exists" in summary.results[0].error and summary.exit_code == EXIT_FAILED
    assert all(p.read_bytes() == b"the other process's result" for p in task.out_dir.iterdir())
    assert _leftovers(task.out_dir) == []


def test_an_earlier_skip_says_why(tmp_path):
    paths, task = _raced(tmp_path, count=1)
    task.planned_outputs(paths[0])["labels"].write_bytes(b"done before")
    result = run_batch(paths, task, RunOptions(skip_existing=True)).results[0]
    assert (result.status, result.reason) == ("skipped", "outputs exist")


def test_partly_done_input_is_redone_with_skip_existing(tmp_path, sample_images):
    out = tmp_path / "out"
    args = ["baseline", sample_images[0], "-o", out, "--save-overlay", "-q"]
    assert invoke(*args).exit_code == 0
    overlay = next(out.glob("*_overlay.png"))
    overlay.unlink()  # a run killed between its two outputs
    resumed = invoke(*args, "--skip-existing", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["status"] == "done"
    assert overlay.exists()


# --------------------------------------------------------------------------- --shard


def test_shards_cover_every_input_exactly_once():
    files = [Path(f"plate/w{i // 10}/img{i:03d}.tif") for i in range(300)]
    for count in (1, 2, 3, 7):
        parts = [select_shard(files, Shard(k, count), roots=[Path("plate")]) for k in range(1, count + 1)]
        taken = [p for part in parts for p in part]
        assert sorted(taken) == sorted(files), count
        assert all(part == [p for p in files if p in set(part)] for part in parts)  # input order kept
        if count == 3:
            assert all(70 <= len(part) <= 130 for part in parts)  # about a third each


def test_shards_are_stable_when_files_are_added_and_ignore_how_the_folder_is_named():
    files = [Path(f"in/img{i:03d}.tif") for i in range(100)]
    more = files + [Path(f"in/new{i:03d}.tif") for i in range(50)]
    for k in (1, 2, 3):
        before = select_shard(files, Shard(k, 3), roots=[Path("in")])
        after = select_shard(more, Shard(k, 3), roots=[Path("in")])
        assert [p for p in after if p in set(files)] == before
        elsewhere = [Path("/mnt/data/in") / p.name for p in files]
        assert [p.name for p in select_shard(elsewhere, Shard(k, 3), roots=[Path("/mnt/data/in/")])] == [
            p.name for p in before
        ]


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "a/b", "1", "1/2/3", "-1/2"])
def test_bad_shard_is_refused(text):
    with pytest.raises(Exception, match="--shard"):
        parse_shard(text)


def test_bad_shard_on_the_command_line_is_a_usage_error(tmp_path, sample_images):
    result = invoke("baseline", sample_images[0], "-o", tmp_path, "--shard", "3/2")
    assert result.exit_code == 2 and "--shard" in result.output
    assert not list(tmp_path.iterdir())


@pytest.fixture
def small_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        image = rng.normal(10, 1, (40, 40))
        image[5 + i : 15 + i, 10:20] += 50
        tifffile.imwrite(folder / f"img{i:02d}.tif", image.astype(np.float32))
    return folder


@pytest.mark.parametrize("jobs", [1, 2])
def test_shard_runs_cover_the_folder_once(tmp_path, small_folder, jobs):
    out = tmp_path / "out"
    seen = []
    for k in (1, 2, 3):
        result = invoke("baseline", small_folder, "-o", out, "--json", "--shard", f"{k}/3", "--jobs", jobs)
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in result.stdout.splitlines()]
        assert {r["shard"] for r in records} <= {f"{k}/3"}
        assert {r["status"] for r in records} <= {"done"}
        assert f"shard {k}/3 ({len(records)} of 12 inputs): {len(records)} done" in result.stderr
        seen += [Path(r["input"]).name for r in records]
    assert sorted(seen) == sorted(p.name for p in small_folder.iterdir())
    assert len(list(out.glob("*_labels.tif"))) == 12


def test_an_empty_shard_has_nothing_to_do(tmp_path, small_folder):
    one = sorted(small_folder.iterdir())[:1]
    results = [invoke("baseline", one[0], "-o", tmp_path / "out", "--shard", f"{k}/4") for k in (1, 2, 3, 4)]
    assert [r.exit_code for r in results] == [0, 0, 0, 0]
    assert sum(" 1 done" in r.stderr for r in results) == 1
    assert sum("(0 of 1 inputs): 0 done" in r.stderr for r in results) == 3


def test_measure_summary_and_evaluate_take_shards(tmp_path, small_folder):
    out = tmp_path / "out"
    assert invoke("baseline", small_folder, "-o", out, "-q").exit_code == 0
    rows, pairs = [], []
    for k in (1, 2):
        measured = invoke("measure", out, "--summary", "--json", "--shard", f"{k}/2")
        assert measured.exit_code == 0, measured.output
        rows += [json.loads(line)["labels"] for line in measured.stdout.splitlines()]
        scored = invoke("evaluate", out, out, "--json", "--shard", f"{k}/2")
        assert scored.exit_code == 0, scored.output
        document = json.loads(scored.stdout)
        assert document["shard"] == f"{k}/2"
        pairs += [image["pred"] for image in document["images"]]
    assert sorted(rows) == sorted(pairs) == sorted(str(p) for p in out.glob("*_labels.tif"))


@pytest.mark.slow
def test_shards_on_dask(tmp_path, small_folder):
    seen = []
    for k in (1, 2):
        proc = subprocess.run([*SEGTOOL, "baseline", str(small_folder), "-o", str(tmp_path / "out"), "--json",
                               "--cluster", "local:1", "--shard", f"{k}/2"], capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr
        seen += [Path(json.loads(line)["input"]).name for line in proc.stdout.splitlines()]
    assert sorted(seen) == sorted(p.name for p in small_folder.iterdir())


# --------------------------------------------------------------------------- outputs listed


def test_every_written_file_is_listed_when_piped(tmp_path, sample_images):
    seg = tmp_path / "seg"
    assert invoke("baseline", *sample_images[:2], "-o", seg, "-q").exit_code == 0
    result = invoke("export", seg, "-f", "imagej-roi,geojson", "-o", tmp_path / "exp")
    assert result.exit_code == 0, result.output
    written = sorted(str(p) for p in (tmp_path / "exp").iterdir())
    assert len(written) == 4 and sorted(result.stdout.split()) == written


def test_full_list_of_outputs_pipes_into_export(tmp_path, sample_images):
    """baseline --save-overlay prints overlays too; export - passes over what is not a label image."""
    seg = tmp_path / "seg"
    listed = invoke("baseline", *sample_images[:2], "-o", seg, "--save-overlay", "-q")
    assert len(listed.stdout.split()) == 4
    result = invoke("export", "-", "-f", "csv", "-q", input=listed.stdout)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.split()) == 2 and all(p.endswith("_objects.csv") for p in result.stdout.split())


# --------------------------------------------------------------------------- two processes at once


def test_two_concurrent_skip_existing_runs_both_succeed(tmp_path, small_folder):
    for i in range(12, 30):  # 30 images
        tifffile.imwrite(small_folder / f"img{i:02d}.tif", np.full((40, 40), 10, np.uint8))
    out = tmp_path / "out"
    command = [*SEGTOOL, "baseline", str(small_folder), "-o", str(out), "--skip-existing", "--json"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    finished = [proc.communicate(timeout=180) for proc in procs]
    done_by = {}
    for proc, (stdout, stderr) in zip(procs, finished):
        assert proc.returncode == 0, stderr
        records = [json.loads(line) for line in stdout.splitlines()]
        statuses = [r["status"] for r in records]
        assert len(records) == 30 and statuses.count("failed") == 0
        assert f"{statuses.count('done')} done, {statuses.count('skipped')} skipped, 0 failed" in stderr
        for record in records:
            if record["status"] == "done":
                assert record["input"] not in done_by, "one output written twice"
                done_by[record["input"]] = proc.pid
    assert len(done_by) == 30  # each input done by exactly one of the two
    assert len(list(out.glob("*_labels.tif"))) == 30 and _leftovers(out) == []
    for path in out.glob("*_labels.tif"):
        read_labels(path)
