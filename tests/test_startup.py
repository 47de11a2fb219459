"""Commands that run no network never import torch (issue #40): they start in a fraction of a second.

Each command runs in a fresh interpreter (the point is what the process imports), through a small
wrapper that calls the CLI's ``main`` and then reports whether ``torch`` is in ``sys.modules``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parents[1]

#: Runs the CLI with argv[1:], then prints, on the last line of stderr, whether torch was imported.
WRAPPER = """
import sys
from segtool.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
print("torch imported:", "torch" in sys.modules, file=sys.stderr)
sys.exit(code)
"""


def _run(args: list[str], cwd: Path) -> tuple[int, bool, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", WRAPPER, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("torch imported:"), done.stderr
    return done.returncode, last.endswith("True"), done.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    from skimage.draw import disk

    folder = tmp_path_factory.mktemp("startup")
    image = np.full((64, 64), 10, np.uint16)
    mask = np.zeros((64, 64), np.uint16)
    for label, centre in enumerate([(16, 16), (40, 44)], start=1):
        image[disk(centre, 7)] = 200
        mask[disk(centre, 7)] = label
    tifffile.imwrite(folder / "img.tif", image)
    tifffile.imwrite(folder / "mask.tif", mask)
    return folder


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["predict", "--help"],
        ["train", "--help"],
        ["baseline", "img.tif", "-o", "out"],
        ["export", "mask.tif", "--format", "csv", "-o", "out"],
        ["measure", "mask.tif"],
        ["evaluate", "mask.tif", "mask.tif"],
        ["model", "list"],
        ["model", "info"],
        ["model", "info", "nuclei-he", "--json"],
    ],
    ids=lambda a: " ".join(a),
)
def test_commands_without_a_network_do_not_import_torch(files, args):
    code, imported, stderr = _run(args, files)
    assert code == 0, stderr
    assert not imported, f"`segtool {' '.join(args)}` imported torch"


def test_the_check_sees_torch_where_it_is_imported(files):
    # The same wrapper on a command that runs the network reports torch: the check can fail.
    code, imported, stderr = _run(["predict", "img.tif", "-o", "pred"], files)
    assert code == 0, stderr
    assert imported
