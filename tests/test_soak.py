"""Soak test: three processes over one folder with --skip-existing, two of them SIGKILLed and restarted.

Run alone with ``pytest -m soak``; the default ``pytest -q`` runs it too. The
first two workers run the plain command over the folder (in step, they race
for the same images); the third takes the images in a shuffled order
(``find | shuf`` style, on stdin). The worker never killed runs at a lower
priority, so that restarted victims still find work. The kills come at random
moments, within half a second of a victim's first result (the seed is in every
failure message).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.draw import disk

from helpers import invoke

pytestmark = pytest.mark.soak

SEGTOOL = [sys.executable, "-m", "segtool"]
IMAGES = 200
KILLS_PER_VICTIM = 2
# The hidden temporary file of a writer (segtool.io.staged_output); a SIGKILLed writer may leave one.
PART = re.compile(r"^\.(img\d{3}_labels\.tif)\.[0-9a-f]{8}\.part$")


def _plate(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(48.0), np.arange(48.0)) * 0.3 + 10
    for i in range(IMAGES):
        image = ramp + rng.normal(0, 2, ramp.shape)
        for _ in range(int(rng.integers(1, 5))):
            rr, cc = disk(tuple(rng.integers(8, 40, 2)), int(rng.integers(3, 7)), shape=image.shape)
            image[rr, cc] += 60
        tifffile.imwrite(folder / f"img{i:03d}.tif", np.clip(image, 0, 255).astype(np.uint8))


class _Slot:
    """One of the three workers: its current process, its logs, and how often it is still to be killed."""

    def __init__(self, name: str, command: list[str], logs: Path, kills: int, rng: random.Random, stdin: str = "",
                 nice: int = 0):
        self.name, self.command, self.logs, self.kills_left, self.rng = name, command, logs, kills, rng
        self.stdin, self.nice = stdin, nice
        self.runs: list[tuple[Path, Path, int | None]] = []  # (stdout, stderr, exit code or None when killed)
        self.start()

    def start(self) -> None:
        n = len(self.runs)
        self.out, self.err = self.logs / f"{self.name}-{n}.out", self.logs / f"{self.name}-{n}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=out, stderr=err, text=True,
                                         preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
        self.proc.stdin.write(self.stdin)  # a few kB: fits the pipe's buffer, read when the inputs are expanded
        self.proc.stdin.close()
        self.kill_after = self.rng.uniform(0.0, 0.5)  # seconds after its first result
        self.first_result = None

    def step(self) -> bool:
        """Advance this slot; True once its last process has ended by itself."""
        code = self.proc.poll()
        if code is not None:
            self.runs.append((self.out, self.err, code))
            return True
        if self.kills_left and os.path.getsize(self.out):
            self.first_result = self.first_result or time.monotonic()
            if time.monotonic() - self.first_result >= self.kill_after:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
                self.runs.append((self.out, self.err, None))
                self.kills_left -= 1
                self.start()
        return False


def _records(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed process may be cut short
            pass
    return records


def test_killed_and_restarted_workers_lose_nothing(tmp_path):
    seed = random.randrange(2**32)
    why = f"(seed {seed})"
    folder, out, logs = tmp_path / "in", tmp_path / "out", tmp_path / "logs"
    _plate(folder)
    logs.mkdir()
    reference = tmp_path / "reference"
    assert invoke("baseline", folder, "-o", reference, "-q").exit_code == 0  # the clean single-process run

    command = [*SEGTOOL, "baseline", "-o", str(out), "--skip-existing", "--json"]
    rng = random.Random(seed)
    images = sorted(str(p) for p in folder.iterdir())
    shuffled = rng.sample(images, len(images))
    slots = [
        _Slot("w0", [*command, str(folder)], logs, 0, rng, nice=5),  # never killed
        _Slot("w1", [*command, str(folder)], logs, KILLS_PER_VICTIM, rng),
        _Slot("w2", [*command, "-"], logs, KILLS_PER_VICTIM, rng, stdin="\n".join(shuffled)),
    ]
    deadline = time.monotonic() + 300
    ended = [False] * 3
    try:
        while not all(ended):
            assert time.monotonic() < deadline, f"workers still running after 300 s {why}"
            ended = [done or slot.step() for done, slot in zip(ended, slots)]
            time.sleep(0.01)
    finally:
        for slot in slots:
            if slot.proc.poll() is None:
                slot.proc.kill()
    kills = sum(code is None for slot in slots for _, _, code in slot.runs)

    # Every input has exactly one output, identical to the clean run's, and nothing else is left
    # but the hidden temporary file of a killed writer.
    names = sorted(p.name for p in out.iterdir())
    results = [n for n in names if not n.startswith(".")]
    assert results == sorted(f"{p.stem}_labels.tif" for p in folder.iterdir()), why
    for name in results:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs {why}"
    parts = [n for n in names if n.startswith(".")]
    assert all(PART.match(n) for n in parts), f"unexpected files {parts} {why}"
    assert len(parts) <= kills, why

    # Each run that ended by itself accounted for every input: done + skipped = 200, none failed.
    done_by: dict[str, str] = {}
    for slot in slots:
        for stdout, stderr, code in slot.runs:
            records = _records(stdout)
            if code is not None:
                statuses = [r["status"] for r in records]
                assert code == 0, f"{stderr.read_text()} {why}"
                assert len(records) == IMAGES and statuses.count("failed") == 0, why
                done, skipped = statuses.count("done"), statuses.count("skipped")
                assert f"segtool: {done} done, {skipped} skipped, 0 failed" in stderr.read_text(), why
            for record in records:
                if record["status"] == "done":  # an output is published once: no input is done twice
                    assert record["input"] not in done_by, f"{record['input']} done twice {why}"
                    done_by[record["input"]] = stdout.name
                else:
                    assert record["status"] == "skipped", f"{record} {why}"
    # Only a writer killed between publishing and reporting leaves an unreported output: one per kill at most.
    assert IMAGES - kills <= len(done_by) <= IMAGES, why
