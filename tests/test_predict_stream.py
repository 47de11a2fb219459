"""Folder prediction with overlapped stages: the same outputs and promises as one image after another."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from segtool.batch import RunOptions, run_batch
from segtool.tasks.predict import PredictTask
from segtool.io import read_labels
from segtool.outputs import OutputOptions
from segtool.infer.predict import find_packaged_model
from segtool.infer.network import load_for_inference


@pytest.fixture(scope="module")
def model():
    return load_for_inference(find_packaged_model(), device="cpu", threads=2, precision="fp32")


def _task(model, out: Path, **changes) -> PredictTask:
    options = dict(model_path=find_packaged_model(), device="cpu", threads=2, precision="fp32",
                   output=OutputOptions(out), save_prob=True)
    options.update(changes)
    task = PredictTask(**options)
    task._model = model
    return task


@pytest.fixture
def folder(tmp_path, sample_images):
    inputs = tmp_path / "in"
    inputs.mkdir()
    paths = []
    for i, source in enumerate(sample_images[:3]):
        paths.append(Path(shutil.copy(source, inputs / f"{i}_{source.name}")))
    bad = inputs / "1b_broken.tif"
    bad.write_bytes(b"not a tiff")
    paths.insert(2, bad)
    return paths


def test_streamed_outputs_are_byte_identical_to_sequential(tmp_path, folder, model):
    runs = {}
    for name, overlap_stages in (("sequential", False), ("streamed", True)):
        out = tmp_path / name
        summary = run_batch(folder, _task(model, out), overlap_stages=overlap_stages)
        runs[name] = (summary, out)
    (seq, seq_out), (streamed, streamed_out) = runs["sequential"], runs["streamed"]
    assert [r.input for r in streamed.results] == [str(p) for p in folder]  # input order
    assert [r.status for r in streamed.results] == [r.status for r in seq.results] == ["done", "done", "failed", "done"]
    assert streamed.results[2].error == seq.results[2].error
    files = sorted(p.name for p in seq_out.iterdir())
    assert len(files) == 6 and files == sorted(p.name for p in streamed_out.iterdir())
    for name in files:
        assert (seq_out / name).read_bytes() == (streamed_out / name).read_bytes(), name
    record = streamed.results[0].figures
    assert record["objects"] > 10
    assert {"read", "normalize", "network", "postprocess", "write"} <= set(record["stage_seconds"])


def test_streamed_stop_skip_existing_and_overwrite(tmp_path, folder, model):
    out = tmp_path / "out"
    stopped = run_batch(folder, _task(model, out), RunOptions(on_error="stop"))
    assert [r.status for r in stopped.results] == ["done", "done", "failed"]
    assert stopped.not_started == 1
    assert not list(out.glob("2_*"))  # nothing written for the input after the failure
    resumed = run_batch(folder, _task(model, out), RunOptions(skip_existing=True))
    assert [r.status for r in resumed.results] == ["skipped", "skipped", "failed", "done"]
    refused = run_batch(folder[:2], _task(model, out))
    assert [r.status for r in refused.results] == ["failed", "failed"]
    assert "--overwrite" in refused.results[0].error


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_streamed_prediction_cleanly(tmp_path, sample_images, sig, code):
    """A real process: the signal arrives while stages of several images are in flight."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(200):  # far more than can finish before the signal arrives
        shutil.copy(sample_images[i % 2], folder / f"img{i:04d}.tif")
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "segtool", "predict", str(folder), "-o", str(out), "--json", "--threads", "1",
         "--precision", "fp32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    first = proc.stdout.readline()
    assert json.loads(first)["status"] == "done"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]
    finished = [json.loads(line) for line in [first, *stdout.splitlines()]]
    assert len(finished) < 200
    written = sorted(p.name for p in out.glob("*_labels.tif"))
    assert written == sorted(Path(r["outputs"]["labels"]).name for r in finished)  # nothing unreported
    for record in finished:
        assert read_labels(record["outputs"]["labels"]).data.max() == record["objects"]


def test_streamed_band_prediction_matches_sequential(tmp_path, sample_images, model):
    """Large images (here forced with bands=True) are predicted band by band in the network stage."""
    paths = sample_images[:2]
    outs = {}
    for name, overlap_stages in (("sequential", False), ("streamed", True)):
        outs[name] = tmp_path / name
        summary = run_batch(paths, _task(model, outs[name], bands=True, band_rows=64, save_prob=False),
                            overlap_stages=overlap_stages)
        assert [r.status for r in summary.results] == ["done", "done"]
        assert all(r.figures["bands"] > 1 and "network" in r.figures["stage_seconds"] for r in summary.results)
    names = sorted(p.name for p in outs["sequential"].iterdir())
    assert len(names) == 2
    for name in names:
        assert (outs["sequential"] / name).read_bytes() == (outs["streamed"] / name).read_bytes()


def test_cli_tile_halo_option(tmp_path, sample_images):
    from typer.testing import CliRunner

    from segtool.cli.application import app

    runner = CliRunner()
    image = str(sample_images[0])
    bad = runner.invoke(app, ["predict", image, "-o", str(tmp_path / "a"), "--tile", "256", "--tile-halo", "125"])
    assert bad.exit_code == 2 and "no core" in bad.stderr and "Traceback" not in bad.stderr
    good = runner.invoke(app, ["predict", image, "-o", str(tmp_path / "b"), "--tile", "224", "--tile-halo", "16",
                               "--json", "--precision", "fp32"])
    assert good.exit_code == 0, good.stderr
    record = json.loads(good.stdout.strip().splitlines()[-1])
    assert record["tiles"] == 4 and record["objects"] > 10  # 256² with 224² tiles: 2 x 2 tiles
