"""Shared fixtures: paths to the real sample images and small synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATA = ROOT / "sample_data"


@pytest.fixture
def sample_images() -> list[Path]:
    paths = sorted((SAMPLE_DATA / "images").glob("*.tif"))
    assert len(paths) >= 3, "sample_data/images should hold the real sample images"
    return paths


@pytest.fixture
def sample_masks() -> list[Path]:
    paths = sorted((SAMPLE_DATA / "masks").glob("*.tif"))
    assert len(paths) >= 3, "sample_data/masks should hold the sample masks"
    return paths


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, a skipped test fails: a skip must never pass as a success."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"test skipped under CI ({report.longrepr}); skips are not allowed to count as passes"


@pytest.fixture
def one_torch_thread():
    """Run a test with one PyTorch thread (deterministic and cheap on a 2-core CI machine), then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _environment_as_found():
    """Each test leaves ``os.environ`` as it found it: a Dask LocalCluster started by a test sets worker variables
    (OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_...) in this process, and later tests' subprocesses inherited them."""
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before):
        del os.environ[key]
    os.environ.update(before)


@pytest.fixture(autouse=True)
def _predict_on_torch(monkeypatch):
    """Tests run predict on torch, writing no ONNX copy to the user's cache (tests/test_onnx_backend.py covers that)."""
    monkeypatch.setenv("SEGTOOL_BACKEND", "torch")
