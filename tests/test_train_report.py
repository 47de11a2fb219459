"""Tests for segtool.train.report (epoch log, curve, model-file summary) and segtool.plotting (the [plot] extra)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from segtool import plotting
from segtool.errors import SegtoolError
from segtool.train.report import LOG_COLUMNS, EpochReport, epoch_line, output_files, plot_curve, write_log


def report(epoch: int, *, val: bool = True, improved: bool = True, best_epoch: int | None = None) -> EpochReport:
    return EpochReport(
        epoch=epoch, epochs=3, train_loss=0.5 / epoch, val_loss=0.25 if val else None, val_f1=0.75 if val else None,
        val_ap=0.625 if val else None, val_ap_mean=0.5 if val else None, learning_rate=1e-3, patches=16,
        seconds=3.0, train_seconds=2.0, data_seconds=0.5, improved=improved,
        best_epoch=epoch if best_epoch is None else best_epoch,
    )


def test_output_files_sit_beside_the_model():
    files = output_files(Path("runs/nuclei.v2.pt"))
    assert files["log"] == Path("runs/nuclei.v2_log.csv") and files["curve"] == Path("runs/nuclei.v2_curve.png")
    assert files["checkpoints"] == Path("runs/nuclei.v2.ckpt") and files["model"] == Path("runs/nuclei.v2.pt")
    assert output_files(Path("model"))["log"] == Path("model_log.csv")


def test_write_log_has_one_row_per_epoch_and_is_rewritten_whole(tmp_path):
    path = tmp_path / "m_log.csv"
    write_log(path, [report(1)])
    write_log(path, [report(1), report(2, val=False, improved=False, best_epoch=1)])
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == list(LOG_COLUMNS)
    first, second = (dict(zip(rows[0], row)) for row in rows[1:])
    assert len(rows) == 3
    assert first["epoch"] == "1" and first["train_loss"] == "0.5" and first["val_f1"] == "0.75"
    assert first["patches_per_second"] == "8" and first["improved"] == "1" and first["learning_rate"] == "0.001"
    assert second["val_loss"] == "" and second["val_f1"] == "" and second["improved"] == "0" and second["best_epoch"] == "1"
    assert second["train_loss"] == "0.25"


def test_epoch_line_shows_validation_scores_only_when_there_are_some():
    line = epoch_line(report(2))
    assert line.startswith("epoch 2/3  loss 0.2500  val_loss 0.2500  F1@0.5 0.750")
    assert line.endswith("best") and "8.0 patches/s" in line
    plain = epoch_line(report(1, val=False, improved=False))
    assert "F1" not in plain and not plain.endswith("best")


@pytest.mark.parametrize("val", [True, False])
def test_plot_curve_writes_a_png(tmp_path, val):
    path = plot_curve(tmp_path / "curve.png", [report(1, val=val), report(2, val=val)], title="m.pt")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plotting_is_optional_with_a_one_line_hint(monkeypatch):
    assert plotting.plotting_available()  # the test environment has the [plot] extra
    plotting.require_plotting("--plot")
    real = plotting.importlib.util.find_spec
    monkeypatch.setattr(plotting.importlib.util, "find_spec", lambda name: None if name == "matplotlib" else real(name))
    assert not plotting.plotting_available()
    with pytest.raises(SegtoolError) as err:
        plotting.require_plotting("--plot")
    message = str(err.value)
    assert "\n" not in message and message.startswith("--plot needs matplotlib") and "segtool[plot]" in message
