"""`segtool train` and `segtool model info` through the CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from segtool.model.modelfile import load_checkpoint, load_model

from helpers import disk_training_set, invoke
from test_fuzz import huge_tiled_tiff


TINY = ["--depth", "2", "--base-channels", "4", "--patch-size", "32", "--batch-size", "4",
        "--patches-per-epoch", "8", "--device", "cpu", "--threads", "1"]


def write_set(root: Path, count: int = 5, *, mask_suffix: str = "", seed: int = 0) -> Path:
    def paint(labels, rng, index):
        return ((labels > 0) * 120 + rng.normal(20, 5, labels.shape)).clip(0, 255).astype(np.uint8)

    return disk_training_set(root, paint, count=count, seed=seed, mask_suffix=mask_suffix)


@pytest.mark.slow
def test_train_one_folder_writes_model_log_curve_and_checkpoints(tmp_path):
    data = write_set(tmp_path / "data")
    model = tmp_path / "out" / "nuclei.pt"
    result = invoke("train", data, "-o", model, "--epochs", "2", "--rotate", "--zoom", "0.2", "--ema", "0.99", "--dice-weight", "0.5", *TINY)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(model)
    assert "epoch 2/2" in result.stderr and "training on 4 images, validating on 1" in result.stderr
    for path in (model, tmp_path / "out" / "nuclei_log.csv", tmp_path / "out" / "nuclei_curve.png",
                 tmp_path / "out" / "nuclei.ckpt" / "last.pt", tmp_path / "out" / "nuclei.ckpt" / "best.pt"):
        assert path.exists(), path
    rows = list(csv.DictReader(open(tmp_path / "out" / "nuclei_log.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "val_loss", "val_f1", "val_ap", "learning_rate", "patches_per_second"} <= set(rows[0])
    assert (tmp_path / "out" / "nuclei_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = load_model(model)
    assert loaded.config.depth == 2 and loaded.config.target == "three_class"
    meta = loaded.metadata
    assert meta["epochs_run"] == 2 and meta["training_data"]["images"] == 4
    augment = meta["options"]["augment"]
    assert augment["rotate"] is True and augment["zoom"] == 0.2 and augment["elastic"] is False
    assert meta["options"]["ema_decay"] == 0.99 and meta["options"]["dice_weight"] == 0.5
    assert "average_model" in load_checkpoint(tmp_path / "out" / "nuclei.ckpt" / "last.pt")
    assert meta["validation"]["images"] == 1 and 0 <= meta["validation"]["f1_iou50"] <= 1
    assert len(meta["training_files"]) == 4 and len(meta["validation_files"]) == 1


@pytest.mark.slow
def test_train_with_appearance_records_it_and_without_it_records_none(tmp_path):
    data = write_set(tmp_path / "data")
    on, off = tmp_path / "on.pt", tmp_path / "off.pt"
    result = invoke("train", data, "-o", on, "--epochs", "1", "--appearance", "--zoom", "1", "--target",
                    "three_class_distance", "--quiet", *TINY)
    assert result.exit_code == 0, result.stderr
    augment = load_model(on).metadata["options"]["augment"]
    assert augment["appearance"] == 0.15 and augment["zoom"] == 1.0
    assert augment["gamma"] > 0 and augment["jpeg"] > 0 and augment["blobs"] > 0
    assert invoke("train", data, "-o", off, "--epochs", "1", "--quiet", *TINY).exit_code == 0
    assert load_model(off).metadata["options"]["augment"]["appearance"] == 0.0


@pytest.mark.slow
def test_train_two_folders_with_mask_suffix_val_and_json(tmp_path):
    data = write_set(tmp_path / "data", 3, mask_suffix="_cp_masks")
    val = write_set(tmp_path / "val", 2, mask_suffix="_mask", seed=1)
    model = tmp_path / "m.pt"
    result = invoke("train", data / "images", data / "masks", "--val", val / "images", val / "masks",
                    "-o", model, "--epochs", "1", "--target", "distance", "--json", "--quiet", *TINY)
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    summary = json.loads(result.stdout)
    assert summary["model"] == str(model) and summary["epochs_run"] == 1
    assert summary["training_data"]["images"] == 3
    assert summary["validation"]["images"] == 2
    assert load_model(model).config.target == "distance"


@pytest.mark.slow
def test_three_class_distance_model_trains_and_predicts_from_the_cli(tmp_path):
    data = write_set(tmp_path / "data", 3)
    model = tmp_path / "m.pt"
    result = invoke("train", data, "-o", model, "--epochs", "1", "--target", "three_class_distance", "--quiet", *TINY)
    assert result.exit_code == 0, result.stderr
    assert load_model(model).config.out_channels == 4
    result = invoke("predict", data / "images", "-m", model, "-o", tmp_path / "pred", "--save-prob", "--quiet")
    assert result.exit_code == 0, result.stderr
    probs = sorted((tmp_path / "pred").glob("*_prob.tif"))
    assert len(probs) == 3 and len(sorted((tmp_path / "pred").glob("*_labels.tif"))) == 3
    assert tifffile.imread(probs[0]).shape[0] == 4


@pytest.mark.slow
def test_model_info_text_and_json(tmp_path):
    data = write_set(tmp_path / "data", 3)
    model = tmp_path / "m.pt"
    assert invoke("train", data, "-o", model, "--epochs", "1", "--quiet", *TINY).exit_code == 0
    result = invoke("model", "info", model)
    assert result.exit_code == 0, result.stderr
    assert "U-Net, depth 2, 4 base channels" in result.stdout
    assert "percentiles 1 / 99.8" in result.stdout
    assert "training data    2 images" in result.stdout
    result = invoke("model", "info", model, "--json")
    info = json.loads(result.stdout)
    assert info["config"]["target"] == "three_class" and info["metadata"]["epochs_run"] == 1
    assert info["parameters"] > 0


def test_model_info_refuses_foreign_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    result = invoke("model", "info", junk, tmp_path / "missing.pt")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"segtool: error: {junk}: not a readable segtool model file")
    assert "not found" in lines[1]
    assert result.stdout == ""


def test_unmatched_files_are_listed_and_nothing_is_written(tmp_path):
    data = write_set(tmp_path / "data", 3)
    (data / "masks" / "cell1.tif").unlink()
    tifffile.imwrite(data / "masks" / "stray.tif", np.zeros((48, 48), np.uint16))
    result = invoke("train", data, "-o", tmp_path / "m.pt", *TINY)
    assert result.exit_code == 1
    assert "image(s) without a mask" in result.stderr and "cell1.tif" in result.stderr
    assert "mask(s) without an image" in result.stderr and "stray.tif" in result.stderr
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "m.ckpt").exists()


def test_bad_shapes_and_non_integer_masks_are_all_reported(tmp_path):
    data = write_set(tmp_path / "data", 4)
    tifffile.imwrite(data / "masks" / "cell1.tif", np.zeros((40, 48), np.uint16))
    tifffile.imwrite(data / "masks" / "cell2.tif", np.full((48, 48), 0.5, np.float32))
    result = invoke("train", data, "-o", tmp_path / "m.pt", *TINY)
    assert result.exit_code == 1
    err = result.stderr
    assert f"segtool: error: {data / 'masks' / 'cell1.tif'}: mask shape (40, 48) differs from image shape (48, 48)" in err
    assert f"segtool: error: {data / 'masks' / 'cell2.tif'}: not an integer label image" in err
    assert "2 bad image/mask file(s); nothing trained" in err
    assert not (tmp_path / "m.pt").exists()


def test_memory_guard_refuses_a_file_before_decoding_it(tmp_path):
    # A tiled zlib TIFF that declares 20000 x 20000 uint16 (763 MiB decoded) in a few kilobytes.
    data = write_set(tmp_path / "data", 3)
    huge = data / "images" / "cell1.tif"
    huge.unlink()
    huge_tiled_tiff(huge, "zlib")
    result = invoke("train", data, "-o", tmp_path / "m.pt", "--max-memory", "256M", *TINY)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("segtool: error:")]
    assert lines[0].startswith(f"segtool: error: {huge}: image is 20000x20000 uint16")
    assert "over the memory limit of 256 MiB (--max-memory)" in lines[0]
    assert "1 bad image/mask file(s); nothing trained" in result.stderr
    assert not (tmp_path / "m.pt").exists()
    result = invoke("train", data, "-o", tmp_path / "m.pt", "--max-memory", "lots", *TINY)
    assert result.exit_code == 2 and "--max-memory" in result.stderr


def test_usage_errors(tmp_path):
    data = write_set(tmp_path / "data", 2)
    result = invoke("train", data / "images", "-o", tmp_path / "m.pt", *TINY)
    assert result.exit_code == 2 and "give IMAGES and MASKS" in result.stderr  # a bad command line (conventions)
    result = invoke("train", data, "-o", tmp_path / "m.pt", "--patch-size", "30", "--depth", "2")
    assert result.exit_code == 1 and "multiple of 2**depth" in result.stderr
    result = invoke("train", data, "-o", tmp_path / "m.pt", "--target", "blobs")
    assert result.exit_code == 2
    result = invoke("train", data, "-o", tmp_path / "m.pt", "--zoom", "-0.5")
    assert result.exit_code == 2 and "--zoom" in result.stderr
    result = invoke("train", data, "-o", tmp_path / "m.pt", "--precision", "fp16")
    assert result.exit_code == 2 and "--precision" in result.stderr
    for bad in ("some", "-1", "1.5"):
        result = invoke("train", data, "-o", tmp_path / "m.pt", "--workers", bad)
        assert result.exit_code == 2 and "--workers" in result.stderr and "expected 'auto' or a whole number" in result.stderr
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.slow
def test_val_seed_keeps_the_validation_images_of_another_seed(tmp_path):
    data = write_set(tmp_path / "data", 8)
    runs = {}
    for name, extra in (("a", ["--seed", "1"]), ("b", ["--seed", "2", "--val-seed", "1"]), ("c", ["--seed", "3"])):
        result = invoke("train", data, "-o", tmp_path / f"{name}.pt", "--epochs", "1", "--val-fraction", "0.25", "--quiet", *TINY, *extra)
        assert result.exit_code == 0, result.stderr
        runs[name] = load_model(tmp_path / f"{name}.pt").metadata
    assert len(runs["a"]["validation_files"]) == 2
    assert runs["b"]["validation_files"] == runs["a"]["validation_files"]
    assert runs["b"]["options"]["seed"] == 2 and "(seed 1)" in runs["b"]["validation_source"]
    assert runs["c"]["validation_files"] != runs["a"]["validation_files"]


@pytest.mark.slow
def test_precision_is_resolved_reported_and_stored(tmp_path):
    from segtool.model.precision import bf16_supported

    data = write_set(tmp_path / "data", 3)
    expected = {"fp32": "fp32", "bf16": "bf16", "auto": "bf16" if bf16_supported(torch.device("cpu")) else "fp32"}
    for name, used in expected.items():
        model = tmp_path / f"{name}.pt"
        result = invoke("train", data, "-o", model, "--epochs", "1", "--precision", name, *TINY)
        assert result.exit_code == 0, result.stderr
        assert f"device cpu, {used}" in result.stderr
        assert load_model(model).metadata["options"]["precision"] == used
        info = invoke("model", "info", model)
        assert info.exit_code == 0 and f"on cpu ({used})" in info.stdout


@pytest.mark.slow  # five short trainings: about 13 s on the loaded 2-core host
def test_workers_are_resolved_reported_stored_and_kept_on_resume(tmp_path):
    from segtool.train.loader import auto_workers

    data = write_set(tmp_path / "data", 3)
    for name, used in (("auto", auto_workers(torch.device("cpu"))), ("2", 2), ("0", 0)):
        model = tmp_path / f"w{name}.pt"
        result = invoke("train", data, "-o", model, "--epochs", "1", "--workers", name, *TINY)
        assert result.exit_code == 0, result.stderr
        assert f", {used} data workers" in result.stderr
        assert load_model(model).metadata["options"]["workers"] == used
    # a run made without workers continues without them (other patches otherwise), and says so
    last = tmp_path / "w0.ckpt" / "last.pt"
    result = invoke("train", data, "-o", tmp_path / "w0.pt", "--resume", last, "--workers", "2", "--overwrite", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "continuing with --workers 0" in result.stderr and ", 0 data workers" in result.stderr
    # a run made with workers continues with the number asked for (any count >= 1 draws the same patches)
    last = tmp_path / "w2.ckpt" / "last.pt"
    result = invoke("train", data, "-o", tmp_path / "w2.pt", "--resume", last, "--workers", "1", "--overwrite", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert ", 1 data workers" in result.stderr and "continuing with" not in result.stderr


@pytest.mark.slow
def test_workers_on_the_cpu_leave_their_cores_to_them(tmp_path):
    data = write_set(tmp_path / "data", 3)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        no_threads = [a for a in TINY if a not in ("--threads", "1")]
        result = invoke("train", data, "-o", tmp_path / "m.pt", "--epochs", "1", "--workers", "2", *no_threads)
        assert result.exit_code == 0, result.stderr
        assert torch.get_num_threads() == 2  # 4 cores' threads less 2 workers
        torch.set_num_threads(4)
        result = invoke("train", data, "-o", tmp_path / "n.pt", "--epochs", "1", "--workers", "2", "--threads", "3", *no_threads)
        assert result.exit_code == 0, result.stderr
        assert torch.get_num_threads() == 3  # --threads wins
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_refuses_to_overwrite_and_points_to_resume(tmp_path):
    data = write_set(tmp_path / "data", 3)
    model = tmp_path / "m.pt"
    assert invoke("train", data, "-o", model, "--epochs", "1", "--quiet", *TINY).exit_code == 0
    result = invoke("train", data, "-o", model, "--epochs", "1", *TINY)
    assert result.exit_code == 1 and "use --overwrite" in result.stderr
    model.unlink()
    (tmp_path / "m_log.csv").unlink()
    (tmp_path / "m_curve.png").unlink()
    result = invoke("train", data, "-o", model, "--epochs", "1", *TINY)
    assert result.exit_code == 1 and f"--resume {tmp_path / 'm.ckpt' / 'last.pt'}" in result.stderr
    result = invoke("train", data, "-o", model, "--epochs", "1", "--overwrite", "--quiet", *TINY)
    assert result.exit_code == 0, result.stderr


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_resume_finishes(tmp_path):
    data = write_set(tmp_path / "data", 4)
    model = tmp_path / "m.pt"
    log = tmp_path / "m_log.csv"
    args = [sys.executable, "-m", "segtool", "train", str(data), "-o", str(model), "--epochs", "40", *TINY]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while not log.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert log.exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = tmp_path / "m.ckpt" / "last.pt"
    assert last.exists() and not model.exists()
    assert f"checkpoint written to {last}" in err and f"--resume {last}" in err
    # the printed command leaves out what the checkpoint fixes and a resumed run would ignore (issue #38)
    again = err.split("continue with:\n", 1)[1].splitlines()[0]
    assert "--resume" in again and "--epochs" not in again and "--patches-per-epoch" not in again, again
    assert out == ""
    # continue (same data; the checkpoint fixes every setting, so no need to repeat them)
    result = invoke("train", data, "-o", model, "--resume", last, "--device", "cpu", "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(open(log)))
    assert [int(r["epoch"]) for r in rows][-1] == load_model(model).metadata["epochs_run"]
    assert load_model(model).metadata["epochs_planned"] == 40


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_spares_the_data_workers_and_resume_finishes(tmp_path):
    # a terminal's Ctrl-C reaches the whole process group, data workers included: the step in flight must
    # still get its batch, the checkpoint must be written, and no worker may outlive the run
    import psutil

    data = write_set(tmp_path / "data", 4)
    model = tmp_path / "m.pt"
    log = tmp_path / "m_log.csv"
    args = [sys.executable, "-m", "segtool", "train", str(data), "-o", str(model), "--epochs", "40", "--workers", "2",
            "--elastic", *TINY]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while not log.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert log.exists(), proc.communicate()[1]
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = tmp_path / "m.ckpt" / "last.pt"
    assert f"checkpoint written to {last}" in err and "Traceback" not in err
    assert err.count("stopping after the current step") == 1  # the workers ignored the signal
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []
    result = invoke("train", data, "-o", model, "--resume", last, "--device", "cpu", "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert load_model(model).metadata["options"]["workers"] >= 1


@pytest.mark.slow
def test_training_time_is_recorded_and_shown(tmp_path):
    import csv

    data = write_set(tmp_path / "data", 3)
    model = tmp_path / "timed.pt"
    result = invoke("train", data, "-o", model, "--epochs", "2", "--quiet", *TINY)
    assert result.exit_code == 0, result.stderr
    recorded = load_model(model).metadata["training_seconds"]
    with open(tmp_path / "timed_log.csv", newline="") as handle:
        logged = sum(float(row["seconds"]) for row in csv.DictReader(handle))
    # a tiny run may take well under a second: compare with the log rather than with a floor
    assert recorded >= 0 and abs(recorded - logged) < 0.01
    info = invoke("model", "info", model)
    assert info.exit_code == 0 and "training time" in info.stdout


@pytest.mark.slow
def test_without_matplotlib_the_curve_is_skipped_with_a_note(tmp_path, monkeypatch):
    import segtool.cli.train as train_command

    monkeypatch.setattr(train_command, "plotting_available", lambda: False)
    data = write_set(tmp_path / "data", 3)
    model = tmp_path / "m.pt"
    result = invoke("train", data, "-o", model, "--epochs", "1", "--json", *TINY)
    assert result.exit_code == 0, result.stderr
    assert "no training curve (m_curve.png): pip install 'segtool[plot]'" in result.stderr
    assert json.loads(result.stdout)["curve"] is None
    assert model.exists() and (tmp_path / "m_log.csv").exists() and not (tmp_path / "m_curve.png").exists()
