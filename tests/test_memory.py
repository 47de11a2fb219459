"""The memory guard (segtool.memory) and quiet libraries (segtool.quiet)."""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from segtool import memory
from segtool.cli.application import app
from segtool.errors import InputError
from segtool.io import read_image
from segtool.memory import MemoryBudget, check_memory, default_memory_limit, parse_memory_limit
from segtool.quiet import collect_records, quiet_libraries

GIB = 2**30


def test_available_memory_reads_meminfo_and_cgroup(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683784 kB\nMemFree:   100 kB\nMemAvailable:   2097152 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert memory.available_memory(meminfo, cgroup) == 2 * GIB
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text(str(GIB))
    assert memory.available_memory(meminfo, cgroup) == 2 * GIB  # no cgroup limit
    (cgroup / "memory.max").write_text(str(GIB + 2**20))
    assert memory.available_memory(meminfo, cgroup) == 2**20  # what the container has left


@pytest.mark.parametrize(
    "text, expected",
    [("8G", 8 * GIB), ("8GiB", 8 * GIB), ("8gb", 8 * GIB), ("512M", 512 * 2**20), ("1.5G", 3 * GIB // 2),
     ("4096", 4096), ("2T", 2 * 2**40), ("none", None), ("off", None)],
)
def test_parse_memory_limit_sizes(text, expected):
    assert parse_memory_limit(text) == expected


def test_parse_memory_limit_shares_of_available():
    assert parse_memory_limit("50%", available=8 * GIB) == 4 * GIB
    assert parse_memory_limit("50%", available=8 * GIB, jobs=4) == GIB
    assert parse_memory_limit(None, available=8 * GIB, jobs=2) == 3 * GIB  # 75 % shared by two workers
    assert parse_memory_limit("8G", available=GIB, jobs=4) == 8 * GIB  # an absolute size is per worker
    assert default_memory_limit(1, available=4 * GIB) == 3 * GIB


@pytest.mark.parametrize("text", ["lots", "8X", "-1G", "150%", "0%", "G", "8 Gbit"])
def test_parse_memory_limit_refuses_non_sizes(text):
    with pytest.raises(InputError, match="--max-memory"):
        parse_memory_limit(text, available=GIB)


def test_check_memory_counts_file_and_working_memory():
    budget = MemoryBudget(limit=100 * 2**20, bytes_per_pixel=20, command="baseline", way_out="use blocks")
    check_memory((2000, 2000), "uint16", 4_000_000, budget)  # 8 MB + 80 MB < 100 MiB
    with pytest.raises(InputError) as err:
        check_memory((2000, 2400), "uint16", 4_800_000, budget)  # 9.6 MB + 96 MB > 100 MiB
    message = str(err.value)
    assert message.startswith("image is 2000x2400 uint16 (9 MiB decoded); baseline would need about 101 MiB")
    assert message.endswith("over the memory limit of 100 MiB (--max-memory): use blocks")
    # A stack decodes whole, even though only one plane is segmented.
    with pytest.raises(InputError, match="image is 60x1000x1000 uint16"):
        check_memory((60, 1000, 1000), "uint16", 1_000_000, budget)  # 120 MB + 20 MB
    check_memory((60000, 60000), "uint16", 3_600_000_000, MemoryBudget(limit=None, bytes_per_pixel=20))
    check_memory((60000, 60000), "uint16", 3_600_000_000, None)


def test_streamed_images_count_only_the_decoded_file():
    budget = MemoryBudget(limit=GIB, bytes_per_pixel=72, command="predict", streamed_above=16 * 2**20)
    check_memory((8000, 8000), "uint8", 64_000_000, budget)  # streamed: 61 MiB
    with pytest.raises(InputError, match="predict would need"):
        check_memory((4000, 4000), "uint8", 16_000_000, budget)  # in memory: 16 Mpx x 73 B


def test_read_image_refuses_before_decoding(tmp_path):
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros((512, 512), np.uint16))
    small = MemoryBudget(limit=2**20, bytes_per_pixel=8, command="baseline", way_out="try blocks")
    with pytest.raises(InputError, match=r"image is 512x512 uint16 \(512 KiB decoded\).*try blocks"):
        read_image(path, memory=small)
    assert read_image(path, memory=MemoryBudget(limit=GIB, bytes_per_pixel=8)).data.shape == (512, 512)


def test_max_memory_option_and_default(tmp_path, monkeypatch):
    path = tmp_path / "cells.tif"
    image = np.zeros((300, 400), np.uint16)
    image[100:140, 100:140] = 1000
    tifffile.imwrite(path, image)
    runner = CliRunner()
    refused = runner.invoke(app, ["baseline", str(path), "-o", str(tmp_path / "a"), "--max-memory", "4M", "--json"])
    assert refused.exit_code == 1
    assert "over the memory limit of 4 MiB (--max-memory)" in json.loads(refused.stdout)["error"]
    assert not (tmp_path / "a").exists()
    # The default is a share of the available memory, read when the command starts.
    monkeypatch.setattr(memory, "available_memory", lambda *a, **k: 4 * 2**20)
    by_default = runner.invoke(app, ["baseline", str(path), "-o", str(tmp_path / "b")])
    assert by_default.exit_code == 1 and "over the memory limit of 3 MiB" in by_default.stderr
    monkeypatch.setattr(memory, "available_memory", lambda *a, **k: 4 * GIB)
    assert runner.invoke(app, ["baseline", str(path), "-o", str(tmp_path / "c")]).exit_code == 0
    bad = runner.invoke(app, ["baseline", str(path), "--max-memory", "lots"])
    assert bad.exit_code == 2 and "--max-memory 'lots' is not a size" in bad.stderr


def test_collect_records_keeps_messages_off_the_handlers():
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        with collect_records("tifffile") as notes:
            logger.error("<TiffPage 0 @8> incorrect StripByteCounts count\nsecond line")
        logger.error("outside")
    finally:
        logger.removeHandler(handler)
    assert notes == ["<TiffPage 0 @8> incorrect StripByteCounts count"]
    assert seen == ["outside"]  # records outside a collection pass as before


def test_quiet_libraries_silences_warnings_and_logs(capsys):
    with quiet_libraries(debug=False):
        warnings.warn("a library warning", UserWarning)
        logging.getLogger("distributed.nanny").warning("restarting worker")
        logging.getLogger("torch").warning("a torch record")
        logging.getLogger("tifffile").error("a tifffile record")
    assert capsys.readouterr().err == ""
    assert not logging.getLogger("distributed").disabled  # restored
    with quiet_libraries(debug=True):
        logging.getLogger("distributed.nanny").warning("restarting worker")
        with collect_records("tifffile"):
            logging.getLogger("tifffile").error("odd tag")
    err = capsys.readouterr().err
    assert "segtool: debug: distributed.nanny: restarting worker" in err
    assert "segtool: debug: segtool: tifffile: odd tag" in err


def test_fixed_working_memory_counts_unless_streamed():
    budget = MemoryBudget(limit=GIB, bytes_per_pixel=40, command="predict", streamed_above=16 * 2**20,
                          fixed_bytes=0.9 * GIB)
    check_memory((1000, 1000), "uint8", 1_000_000, budget)  # 1 MB + 40 MB + 0.9 GiB < 1 GiB
    with pytest.raises(InputError, match="predict would need about 1.1 GiB"):
        check_memory((2000, 2000), "uint8", 4_000_000, budget)  # 4 MB + 160 MB + 0.9 GiB
    check_memory((8000, 8000), "uint8", 64_000_000, budget)  # streamed: the decoded file alone


def test_predict_guard_has_its_fixed_part():
    from segtool.cli.options import memory_budget
    from segtool.memory import FIXED_BYTES

    assert memory_budget("4G", "predict").fixed_bytes == FIXED_BYTES["predict"] > 0
    assert memory_budget("4G", "baseline").fixed_bytes == 0


_FRAGMENTED_HEAP = r"""
import sys
import numpy as np
from segtool.memory import return_freed_memory_promptly

def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))

if sys.argv[1] == "set":
    assert return_freed_memory_promptly()
block = np.ones(24 << 20, np.uint8)
del block  # glibc now serves blocks below 24 MiB from the heap, unless the threshold was fixed (at 16 MiB)
blocks = [np.ones(18 << 20, np.uint8) for _ in range(10)]
before = rss_mib()
del blocks[::2]  # 90 MiB freed between live blocks
print(round(before - rss_mib()))
"""


def test_freed_large_blocks_go_back_to_the_os_once_the_threshold_is_fixed():
    """On Linux with glibc (CI's platform)."""
    import os
    import subprocess
    import sys

    def returned(mode: str) -> int:
        # glibc reads MALLOC_* variables (a Dask cluster started in this process sets one), and any of them
        # turns off the adjustment this test shows
        env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
        done = subprocess.run([sys.executable, "-c", _FRAGMENTED_HEAP, mode], capture_output=True, text=True,
                              check=True, env=env)
        return int(done.stdout.strip())

    assert returned("unset") < 20  # what predict of a large image met: freed memory kept by the heap
    assert returned("set") >= 80
