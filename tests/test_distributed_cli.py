"""Big-image mode from the command line (``--block-size``, ``--zarr``) on a 2-worker local cluster.

The block-level algorithms are tested in test_distributed_baseline.py,
test_distributed_predict.py and test_blockio.py; here the commands are run the
way a user runs them, and their outputs compared with the in-memory commands'.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from segtool.cli.application import app
from segtool.io import read_labels
from segtool.synthetic import make_nuclei_image

zarr = pytest.importorskip("zarr")

SEGTOOL = [sys.executable, "-m", "segtool"]


def _run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*SEGTOOL, *args], capture_output=True, text=True, timeout=timeout)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to label numbering: same foreground, and label pairs one-to-one."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a[a > 0], b[b > 0]]).astype(np.int64), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


@pytest.fixture(scope="module")
def big_image(tmp_path_factory) -> Path:
    """A 700 x 900 uint16 tiled TIFF with 0.5 um pixels: many 128-px blocks, nuclei across their borders."""
    folder = tmp_path_factory.mktemp("big")
    image, _ = make_nuclei_image((700, 900), n_nuclei=160, seed=3, dtype="uint16")
    path = folder / "scan.tif"
    tifffile.imwrite(path, image, tile=(64, 64), compression="zlib", resolution=(2.0, 2.0),
                     resolutionunit="CENTIMETER", metadata={"unit": "um"}, imagej=False)
    return path


@pytest.mark.slow
def test_baseline_block_mode_equals_in_memory(big_image, tmp_path):
    memory = _run(["baseline", str(big_image), "-o", str(tmp_path / "memory"), "--json"])
    blocks = _run(["baseline", str(big_image), "-o", str(tmp_path / "blocks"), "--json", "--block-size", "128",
                   "--cluster", "local:2"])
    assert memory.returncode == blocks.returncode == 0, blocks.stderr
    expected, got = json.loads(memory.stdout), json.loads(blocks.stdout)
    assert got["objects"] == expected["objects"] > 50
    assert got["threshold"] == expected["threshold"]
    assert got["blocks"] == 6 * 8
    a = read_labels(tmp_path / "memory" / "scan_labels.tif")
    b = read_labels(tmp_path / "blocks" / "scan_labels.tif")
    assert _same_partition(a.data, b.data)
    assert b.data.dtype == np.uint16 and b.pixel_size == a.pixel_size
    with tifffile.TiffFile(tmp_path / "blocks" / "scan_labels.tif") as tif:
        assert tif.pages[0].is_tiled and tif.is_bigtiff


@pytest.mark.slow
def test_baseline_block_mode_writes_and_reads_ome_zarr(big_image, tmp_path):
    out = tmp_path / "out"
    first = _run(["baseline", str(big_image), "-o", str(out), "--block-size", "256", "--zarr", "-q"])
    assert first.returncode == 0, first.stderr
    store = out / "scan_labels.ome.zarr"
    group = zarr.open_group(store, mode="r")
    assert group.attrs["multiscales"][0]["version"] == "0.4"
    assert group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    labels = np.asarray(group["0"])
    reference = _run(["baseline", str(big_image), "-o", str(tmp_path / "memory"), "-q"])
    assert reference.returncode == 0
    assert _same_partition(labels, read_labels(tmp_path / "memory" / "scan_labels.tif").data)

    # The same command again: the result exists, so the image fails (exit 1) and nothing is replaced.
    again = _run(["baseline", str(big_image), "-o", str(out), "--block-size", "256", "--zarr", "-q"])
    assert again.returncode == 1 and "use --overwrite" in again.stderr
    # A Zarr store is an input too: segment the labels store itself as an image (block mode required).
    refused = _run(["baseline", str(store), "-o", str(tmp_path / "z"), "-q"])
    assert refused.returncode == 1 and "add --block-size" in refused.stderr and "Traceback" not in refused.stderr
    accepted = _run(["baseline", str(store), "-o", str(tmp_path / "z"), "--block-size", "256", "--json", "-q",
                     "--cluster", "local:1"])
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["objects"] >= 1


@pytest.mark.slow
def test_predict_block_mode_matches_in_memory(tmp_path, sample_images):
    from segtool.metrics import match_labels

    image = sample_images[0]
    memory = _run(["predict", str(image), "-o", str(tmp_path / "memory"), "--json", "--threads", "1"])
    blocks = _run(["predict", str(image), "-o", str(tmp_path / "blocks"), "--json", "--threads", "1",
                   "--block-size", "128", "--halo", "32", "--cluster", "local:2"])
    assert memory.returncode == blocks.returncode == 0, blocks.stderr
    record = json.loads(blocks.stdout)
    assert record["blocks"] >= 4
    # --diameter auto: one estimate per image in both modes (this image is smaller than the sample: the same one)
    in_memory = json.loads(memory.stdout)
    assert record["diameter_source"] == in_memory["diameter_source"] == "estimated"
    assert record["scale"] == in_memory["scale"] and record["diameter"] == pytest.approx(in_memory["diameter"], rel=0.05)
    a = read_labels(next((tmp_path / "memory").glob("*_labels.tif"))).data
    b = read_labels(next((tmp_path / "blocks").glob("*_labels.tif"))).data
    counts = match_labels(a, b, thresholds=(0.5,))
    assert counts.f1[0] >= 0.99 and record["objects"] == int(b.max())


@pytest.mark.slow
def test_predict_block_mode_honours_scale(tmp_path, sample_images):
    from segtool.metrics import match_labels

    image = sample_images[0]
    memory = _run(["predict", str(image), "-o", str(tmp_path / "memory"), "--json", "--threads", "1", "--scale", "1.5"])
    blocks = _run(["predict", str(image), "-o", str(tmp_path / "blocks"), "--json", "--threads", "1", "--scale", "1.5",
                   "--block-size", "160", "--halo", "32", "--jobs", "1"])
    assert memory.returncode == blocks.returncode == 0, blocks.stderr
    record = json.loads(blocks.stdout)
    assert (record["scale"], record["diameter_source"]) == (1.5, None)
    a = read_labels(next((tmp_path / "memory").glob("*_labels.tif"))).data
    b = read_labels(next((tmp_path / "blocks").glob("*_labels.tif"))).data
    assert a.shape == b.shape  # labels at the image's own size
    assert match_labels(a, b, thresholds=(0.5,)).f1[0] >= 0.99


@pytest.mark.parametrize(
    "args, message",
    [
        (["baseline", "--zarr"], "--zarr writes big-image mode's labels"),
        (["baseline", "--block-size", "256", "--save-overlay"], "--save-overlay: not available in big-image mode"),
        (["predict", "--block-size", "256", "--save-prob"], "--save-prob: not available in big-image mode"),
        (["predict", "--block-size", "256", "--bands"], "--bands: not available in big-image mode"),
        (["baseline", "--block-size", "256", "--jobs", "2"], "--jobs runs local processes"),
    ],
)
def test_block_mode_usage_errors_exit_2(big_image, tmp_path, args, message):
    command, *options = args
    result = CliRunner().invoke(app, [command, str(big_image), "-o", str(tmp_path), *options])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())
