"""Every fenced shell example of the README runs as written, in order, in a scratch copy of the project.

How it works (and how a new README block passes):

- Every ```` ```bash ```` / ```` ```sh ```` block of README.md is run, top to bottom, each as one ``bash`` script
  (``set -eo pipefail``: any failing command, or a failing stage of a pipeline, fails the block), in ONE scratch
  folder shared by all blocks, so a block may use what an earlier one wrote (``nuclei.pt``, ``out/``...). Blocks in
  other languages (``json``, plain output) are not run. New blocks are picked up by themselves.
- The scratch folder is a copy of the project (``sample_data/``, the package, ...) plus the stand-in inputs a user
  is assumed to have, made by :func:`make_stand_ins` (listed in ``STAND_INS``): a new block may use those, or files
  made by an earlier block or by itself; anything else must be added there.
- ``segtool`` and ``python`` (and ``.venv/bin/segtool``, ``.venv/bin/python``, ``.venv/bin/bioimageio``) run the
  project under test. A block that cannot run here (needs a GPU, a cluster address, a GUI, the network) gets a
  marker on a line of its own just above its fence (blank lines and other ``<!-- -->`` comments may sit between):
  ``<!-- readme-test: skip (REASON) -->``. Such a block is not collected as a test at all (a skipped test would
  read as a pass); ``test_blocks_not_run_give_reasons_and_name_real_commands`` checks that each gives a reason and
  that every ``segtool`` sub-command it names exists.
- Long runs are shortened in a listed way, never silently: every ``segtool train`` gets ``TRAIN_OVERRIDES``
  appended (the last value of an option wins), and ``TEXT_SUBSTITUTIONS`` replace literal text in a block; each
  substitution must still match the README, so a stale entry fails the test.
- Each block must end with exit status 0 and must not print a traceback. Examples that collide when run in order
  (writing an existing output without ``--overwrite``) therefore fail here.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP_MARKER = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
RUN_LANGUAGES = ("bash", "sh", "shell")

#: Appended to every `segtool train` command: one short epoch of small patches (the README gives real values).
TRAIN_OVERRIDES = ("--epochs", "1", "--patches-per-epoch", "8", "--patch-size", "64", "--batch-size", "4")

#: (README text, what the test runs instead, why): literal replacements inside the blocks.
TEXT_SUBSTITUTIONS = (
    ("make_nuclei_stack((64, 256, 256)", "make_nuclei_stack((32, 128, 128)", "a smaller synthetic Z stack"),
)

#: Stand-in inputs made in the scratch folder: name -> what it is.
STAND_INS = {
    "plates/": "three 256 x 256 uint16 synthetic nuclei images (plate_1.tif ...)",
    "IMAGES/, MASKS/": "the sample images and their masks (flat folders)",
    "DATASET/images, DATASET/masks": "the same, as one folder",
    "my_he/images, my_he/masks": "three 8-bit RGB images of hematoxylin discs on eosin, with their label masks",
    "my_he/new_images": "one more such RGB image",
    "data/": "synthetic nuclei images in two sub-folders (data/plate1/, data/plate2/)",
    "img01_cp_masks.png": "a Cellpose-style label PNG",
    "scan_20000x20000.tif": "a 600 x 600 uint16 stand-in (the name only; a real one is 800 MB)",
}

BLOCK_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    """One fenced example of the README."""

    line: int  # 1-based line of the opening fence
    language: str
    text: str
    skip_reason: str | None


def readme_blocks(text: str) -> list[Block]:
    """The README's fenced code blocks, in order, with any ``readme-test: skip`` marker above each.

    >>> readme_blocks("<!-- readme-test: skip (GPU) -->\\n```bash\\nls\\n```\\n")[0].skip_reason
    'GPU'
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = re.match(r"^(```+)\s*([\w+-]*)\s*$", lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening.group(1), opening.group(2).lower()
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        reason = None
        above = index - 1
        while above >= 0 and (not lines[above].strip() or lines[above].strip().startswith("<!--")):
            marker = SKIP_MARKER.search(lines[above])
            if marker:
                reason = marker.group("reason").strip()
            above -= 1
        blocks.append(Block(index + 1, language, "\n".join(lines[index + 1:end]), reason))
        index = end + 1
    return blocks


def runnable_blocks() -> list[Block]:
    return [b for b in readme_blocks(README.read_text(encoding="utf-8")) if b.language in RUN_LANGUAGES]


def _nuclei(shape, seed, dtype=np.uint16):
    from segtool.synthetic import make_nuclei_image

    image, labels = make_nuclei_image(shape, seed=seed)
    scaled = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
    return (scaled * (np.iinfo(dtype).max // 4)).astype(dtype), labels


def _stained(shape, seed):
    """An 8-bit RGB image of hematoxylin discs on eosin, and its labels."""
    from segtool.intake import STAIN_RGB

    _, labels = _nuclei(shape, seed)
    rng = np.random.default_rng(seed)
    amount = (labels > 0) * rng.uniform(0.7, 1.1)
    density = amount * STAIN_RGB[0][:, None, None] + 0.25 * STAIN_RGB[1][:, None, None]
    density = density + rng.normal(0, 0.01, density.shape)
    rgb = np.clip(np.round(255 * 10.0 ** -density), 0, 255).astype(np.uint8)
    return np.moveaxis(rgb, 0, -1), labels.astype(np.uint16)


def make_stand_ins(root: Path) -> None:
    """Create the inputs of ``STAND_INS`` under ``root``."""
    samples = sorted((ROOT / "sample_data" / "images").glob("*.tif"))
    for i in range(3):
        (root / "plates").mkdir(exist_ok=True)
        tifffile.imwrite(root / "plates" / f"plate_{i + 1}.tif", _nuclei((256, 256), 10 + i)[0])
    for images, masks in (("IMAGES", "MASKS"), ("DATASET/images", "DATASET/masks")):
        (root / images).mkdir(parents=True)
        (root / masks).mkdir(parents=True)
        for image in samples:
            shutil.copy(image, root / images / image.name)
            shutil.copy(ROOT / "sample_data" / "masks" / image.name, root / masks / image.name)
    for folder in ("my_he/images", "my_he/masks", "my_he/new_images"):
        (root / folder).mkdir(parents=True)
    for i in range(3):
        rgb, labels = _stained((160, 160), 20 + i)
        tifffile.imwrite(root / "my_he" / "images" / f"he_{i}.tif", rgb, photometric="rgb")
        tifffile.imwrite(root / "my_he" / "masks" / f"he_{i}.tif", labels)
    tifffile.imwrite(root / "my_he" / "new_images" / "he_new.tif", _stained((160, 160), 30)[0], photometric="rgb")
    for i, plate in enumerate(("plate1", "plate2")):
        (root / "data" / plate).mkdir(parents=True)
        for j in range(2):
            tifffile.imwrite(root / "data" / plate / f"{plate}_well{j}.tif", _nuclei((192, 192), 40 + 2 * i + j)[0])
    from PIL import Image

    Image.fromarray(_nuclei((128, 128), 50)[1].astype(np.uint8)).save(root / "img01_cp_masks.png")
    tifffile.imwrite(root / "scan_20000x20000.tif", _nuclei((600, 600), 60)[0])


def _shim(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def make_scratch(root: Path) -> dict[str, str]:
    """Copy the project to ``root``, add the stand-ins and the command shims; return the environment to run in."""
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", "*.egg-info", ".hypothesis")
    shutil.copytree(ROOT, root, ignore=ignore, dirs_exist_ok=True)
    make_stand_ins(root)
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    train_args = ", ".join(repr(a) for a in TRAIN_OVERRIDES)
    _shim(bin_dir / "segtool", (
        "import runpy, sys\n"
        "args = sys.argv[1:]\n"
        f"if args[:1] == ['train'] and '--resume' not in args:\n    args += [{train_args}]\n"
        "sys.argv = [sys.argv[0]] + args\n"
        "runpy.run_module('segtool', run_name='__main__', alter_sys=True)\n"
    ))
    _shim(bin_dir / "python", "import os, sys\nos.execv(sys.executable, [sys.executable] + sys.argv[1:])\n")
    bioimageio = Path(sys.executable).with_name("bioimageio")
    if bioimageio.exists():
        (bin_dir / "bioimageio").symlink_to(bioimageio)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(root), MPLBACKEND="Agg",
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"), HOME=str(root / "home"))
    (root / "home").mkdir()
    return env


def as_run(block: Block) -> str:
    """The script the test runs for a block: the block itself with ``TEXT_SUBSTITUTIONS`` applied."""
    text = block.text
    for old, new, _why in TEXT_SUBSTITUTIONS:
        text = text.replace(old, new)
    return "set -eo pipefail\n" + text + "\n"


def run_block(block: Block, root: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run one block with bash in ``root``; its exit status and output."""
    return subprocess.run(["bash", "-c", as_run(block)], cwd=root, env=env, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S, stdin=subprocess.DEVNULL)


def test_a_block_that_drifted_from_the_tool_fails(tmp_path):
    """What the README check relies on: a wrong option, or a failing stage of a pipeline, fails the block."""
    (tmp_path / "bin").mkdir()
    _shim(tmp_path / "bin" / "segtool", "import runpy\nrunpy.run_module('segtool', run_name='__main__', alter_sys=True)\n")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    drifted = Block(1, "bash", "segtool baseline --no-such-option sample.tif\necho not reached", None)
    assert run_block(drifted, tmp_path, env).returncode == 2
    piped = Block(1, "bash", "segtool baseline missing.tif | cat", None)
    assert run_block(piped, tmp_path, env).returncode == 1
    assert run_block(Block(1, "bash", "segtool --help | cat", None), tmp_path, env).returncode == 0


def test_the_readme_parser_finds_blocks_and_markers():
    text = "\n".join([
        "```bash", "echo one", "```", "",
        "<!-- readme-test: skip (needs a GPU) -->", "<!-- other: start -->", "```bash", "echo two", "```",
        "```json", "{}", "```",
    ])
    blocks = readme_blocks(text)
    assert [(b.line, b.language, b.text, b.skip_reason) for b in blocks] == [
        (1, "bash", "echo one", None), (7, "bash", "echo two", "needs a GPU"), (10, "json", "{}", None)]


def test_every_substitution_still_matches_the_readme_and_skips_give_reasons():
    text = "\n".join(b.text for b in runnable_blocks())
    for old, _new, why in TEXT_SUBSTITUTIONS:
        assert old in text, f"stale substitution ({why}): {old!r} is no longer in the README"
    for block in runnable_blocks():
        assert block.skip_reason is None or len(block.skip_reason) > 3, block.line


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    return root, make_scratch(root)


_BLOCKS = [b for b in runnable_blocks() if b.skip_reason is None]
_NOT_RUN = [b for b in runnable_blocks() if b.skip_reason is not None]
SUBCOMMAND = re.compile(r"(?:^|[\s|;&(])(?:\.venv/bin/)?segtool\s+(?P<name>[a-z][a-z-]*)")


def test_blocks_not_run_give_reasons_and_name_real_commands():
    """A block marked as not runnable here still names only sub-commands the tool has."""
    names = set()
    for block in _NOT_RUN:
        assert len(block.skip_reason) > 3, f"README.md:{block.line}: the skip marker needs a reason"
        commands = "\n".join(line.split("#", 1)[0] for line in block.text.splitlines())  # comments are prose
        names.update(m.group("name") for m in SUBCOMMAND.finditer(commands))
    for name in sorted(names):
        done = subprocess.run([sys.executable, "-m", "segtool", name, "--help"], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, f"a README block not run here names `segtool {name}`, which does not exist"


@pytest.mark.slow
@pytest.mark.parametrize("block", _BLOCKS, ids=[f"README.md:{b.line}" for b in _BLOCKS])
def test_readme_example_runs(block, scratch):
    root, env = scratch
    done = run_block(block, root, env)
    report = f"README.md:{block.line} failed (exit {done.returncode}):\n{block.text}\n--- stderr ---\n{done.stderr[-3000:]}"
    assert done.returncode == 0, report
    assert "Traceback" not in done.stderr, report
