"""Run a model's network on onnxruntime: ``segtool predict`` without importing torch.

Importing torch and warming up its first convolution take 1.5-2 s on a
2-core CPU, longer than the network needs for a small image;
onnxruntime starts in about 0.2 s (BENCHMARKS.md, "Start-up"). So on
CPU, when onnxruntime is installed (``pip install 'segtool[onnx]'``),
``predict`` runs the network from an ONNX copy of the model file, kept in a
cache folder (:func:`cache_dir`) under the file's SHA-256. The copy is
written once, with torch, by the first ``predict`` that finds none
(:func:`write_onnx_copy`, about 2 s); later runs never import torch.

The copy holds the float32 network with its output activation, the same
network :mod:`segtool.interop.netexport` exports, minus the refusal of
input transforms: segtool applies the model's input transform before the
network (:func:`segtool.intake.apply_input_transform`), as with torch.
Its maps equal torch's float32 ones to ~1e-6; bf16 torch differs from them
by ~1e-2, and the labels of the dsb2018_fluo test split agree at object F1
1.000 either way (BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BACKEND_ENV",
    "CACHE_ENV",
    "OnnxModel",
    "OnnxNet",
    "cache_dir",
    "LARGE_BATCH_PIXELS",
    "load_onnx_model",
    "native_bf16_cpu",
    "onnx_copy_path",
    "onnxruntime_available",
    "prefer_onnxruntime",
    "write_onnx_copy",
]

#: Environment variable naming the cache folder (default ``$XDG_CACHE_HOME/segtool`` or ``~/.cache/segtool``).
CACHE_ENV = "SEGTOOL_CACHE_DIR"

#: Environment variable: ``torch`` keeps predict on torch (no ONNX copy is used or written).
BACKEND_ENV = "SEGTOOL_BACKEND"

#: Tile batches of this many pixels or more run on torch in bf16 where the CPU has bf16 instructions: there
#: the network is 1.7-2x faster than onnxruntime's float32 (2048^2, BENCHMARKS.md), which outweighs torch's
#: start-up from about this size; below it (a folder of small images, say) onnxruntime's start-up wins.
LARGE_BATCH_PIXELS = 1024 * 1024

#: Part of the copy's name: bump when the exported graph changes, so older copies are not used.
_COPY_VERSION = 1


def cache_dir() -> Path:
    """The folder where ONNX copies of model files are kept.

    Examples
    --------
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {CACHE_ENV: "segtool-cache"}):  # the caller's setting is restored after
    ...     str(cache_dir())
    'segtool-cache'
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "segtool"


def onnx_copy_path(model_path: str | os.PathLike) -> Path:
    """Where the ONNX copy of a model file is kept: named by the file's SHA-256, so an edited file gets a new copy."""
    digest = hashlib.sha256()
    with open(model_path, "rb") as handle:  # in pieces: the file may be a stranger's, of any size
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    digest = digest.hexdigest()[:32]
    return cache_dir() / "onnx" / f"{digest}-v{_COPY_VERSION}.onnx"


def onnxruntime_available() -> bool:
    """Whether onnxruntime can be imported (found without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def _maybe_gpu() -> bool:
    # "auto" means a GPU when torch sees one; without importing torch, look for the drivers torch would use.
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/kfd") or sys.platform == "darwin"


def prefer_onnxruntime(*, device: str, precision: str, tta: bool = False) -> bool:
    """Whether ``predict`` runs the network on onnxruntime rather than torch.

    On CPU only (``--device cpu``, or ``auto`` on a machine without GPU
    drivers), in float32 or ``auto`` precision (onnxruntime computes in
    float32; an explicit ``--precision bf16`` keeps torch), and when
    onnxruntime is installed; and not when the environment variable
    ``SEGTOOL_BACKEND`` is ``torch``.
    """
    if os.environ.get(BACKEND_ENV, "auto") == "torch":
        return False
    if device not in ("cpu", "auto") or (device == "auto" and _maybe_gpu()):
        return False
    return precision in ("auto", "fp32") and onnxruntime_available()


def _flip_rotate(x: np.ndarray, flip: bool, turns: int) -> np.ndarray:
    return np.rot90(x[..., ::-1] if flip else x, turns, axes=(-2, -1))


def _unflip_rotate(x: np.ndarray, flip: bool, turns: int) -> np.ndarray:
    y = np.rot90(x, -turns, axes=(-2, -1))
    return y[..., ::-1] if flip else y


def native_bf16_cpu() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), read from ``/proc/cpuinfo`` (Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


@dataclass
class OnnxNet:
    """An onnxruntime session standing where a prepared torch network would (see :func:`make_predictor`).

    :func:`segtool.infer.network.make_predictor` recognises it by
    ``segtool_backend`` and asks it for its predictor. ``large`` (a
    callable returning the torch predictor of the same model, loaded on
    first use) takes the tile batches of :data:`LARGE_BATCH_PIXELS` or more.
    """

    session: Any
    large: Callable[[bool], Callable[[np.ndarray], np.ndarray]] | None = None
    segtool_backend: str = "onnxruntime"
    segtool_prepared: bool = True
    segtool_precision: str = "fp32"
    segtool_channels_last: bool = False
    _warming: Any = field(default=None, repr=False, compare=False)

    def warm_large(self, pixels: int) -> None:
        """An image of ``pixels`` is coming: if its tiles will go to torch, start loading torch now, on a thread.

        Importing torch and loading the network (1-1.5 s on 2 cores) then overlap reading and normalising
        the image instead of delaying its first tile batch.
        """
        if self.large is not None and self._warming is None and pixels >= LARGE_BATCH_PIXELS:
            self._warming = threading.Thread(target=self.large, args=(False,), name="segtool-torch-load", daemon=True)
            self._warming.start()

    def predictor(self, *, tta: bool = False) -> Callable[[np.ndarray], np.ndarray]:
        """``(N, C_in, h, w)`` float32 -> ``(N, C_out, h, w)`` activated maps, as torch's predictor.

        ``tta`` averages the eight flips and rotations of a square tile (four of a non-square one, 0 and 180
        degrees), in the same order as the torch predictor.
        """
        session = self.session
        name = session.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

        def predictor(batch: np.ndarray) -> np.ndarray:
            batch = np.asarray(batch, dtype=np.float32)
            if self.large is not None and batch.shape[0] * batch.shape[-2] * batch.shape[-1] >= LARGE_BATCH_PIXELS:
                return self.large(tta)(batch)
            if not tta:
                return run(batch)
            square = batch.shape[-1] == batch.shape[-2]
            total, count = None, 0
            for flip in (False, True):
                for k in range(4 if square else 2):
                    turns = k if square else 2 * k
                    out = _unflip_rotate(run(_flip_rotate(batch, flip, turns)), flip, turns)
                    total = out.copy() if total is None else total + out
                    count += 1
            return np.ascontiguousarray(total / count, dtype=np.float32)

        return predictor


@dataclass
class OnnxModel:
    """A model whose network runs on onnxruntime: the same ``config``, ``metadata`` and ``path`` as a LoadedModel."""

    net: OnnxNet
    config: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _torch_for_large(path: Path, config, threads: int | None) -> Callable[[bool], Callable[[np.ndarray], np.ndarray]]:
    """A function of ``tta`` giving the torch bf16 predictor of the model file (loaded on first call, once)."""
    loaded: dict[bool, Callable[[np.ndarray], np.ndarray]] = {}
    lock = threading.Lock()  # OnnxNet.warm_large may be loading it on another thread

    def large(tta: bool) -> Callable[[np.ndarray], np.ndarray]:
        with lock:
            return loaded[tta] if tta in loaded else _load(tta)

    def _load(tta: bool) -> Callable[[np.ndarray], np.ndarray]:
        if tta not in loaded:
            from segtool.infer.network import load_for_inference_cached, make_predictor

            model = load_for_inference_cached(path, device="cpu", threads=threads, precision="bf16")
            loaded[tta] = make_predictor(model.net, config.target, tta=tta)
        return loaded[tta]

    return large


def load_onnx_model(model_path: str | os.PathLike, *, threads: int | None = None,
                    torch_for_large: bool = False) -> OnnxModel | None:
    """The model at ``model_path`` on onnxruntime, or None when it has no ONNX copy yet (or onnxruntime is missing).

    Parameters
    ----------
    model_path : path-like
        A segtool model file (a bioimage.io package gives None: its network is loaded with torch).
    threads : int, optional
        onnxruntime's threads (default: one per core).
    torch_for_large : bool, optional
        Run tile batches of :data:`LARGE_BATCH_PIXELS` or more on torch in
        bf16 (``--precision auto`` on a CPU with bf16 instructions).

    Raises
    ------
    ModelError
        If the model file is unreadable (as :func:`segtool.model.modelinfo.read_model_info`).
    """
    path = Path(model_path)
    if not onnxruntime_available() or not path.is_file():
        return None
    copy = onnx_copy_path(path)
    if not copy.is_file():
        return None
    from segtool.model.modelinfo import parse_payload, read_model_header

    payload = read_model_header(path)
    if payload is None:
        return None
    config, metadata = parse_payload(payload)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads or os.cpu_count() or 1)
    options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
    try:
        session = onnxruntime.InferenceSession(str(copy), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001  a damaged copy: torch runs the network, and the copy is written again
        copy.unlink(missing_ok=True)
        return None
    large = _torch_for_large(path, config, threads) if torch_for_large else None
    # tiles are planned for the arithmetic of the large calls (segtool.pipeline.options.budget_tile)
    net = OnnxNet(session, large=large, segtool_precision="bf16" if large else "fp32")
    return OnnxModel(net=net, config=config, metadata=metadata, path=path)


def write_onnx_copy(model_path: str | os.PathLike) -> Path | None:
    """Export the model file's network to its ONNX copy (with torch), checked against torch; None if it cannot.

    The copy is written atomically, and only where onnxruntime reproduces
    torch's float32 maps within 1e-4 on a test tile, so a broken copy is
    never used. Failures (no writable cache, an exporter error) return None:
    predict then keeps using torch.
    """
    import tempfile
    import warnings

    from segtool.model.modelinfo import read_model_header

    path = Path(model_path)
    # a file load_onnx_model cannot read without torch (a bioimage.io package) would get a copy it never uses
    if not onnxruntime_available() or not path.is_file() or read_model_header(path) is None:
        return None
    try:
        import onnxruntime
        import torch

        from segtool.interop.bioimageio_unet import SegtoolUNet
        from segtool.model.modelfile import load_model

        model = load_model(path, device="cpu")
        config = model.config
        net = SegtoolUNet(in_channels=config.in_channels, depth=config.depth, base_channels=config.base_channels,
                          target=config.target)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in model.net.state_dict().items()})
        net.eval()
        copy = onnx_copy_path(path)
        copy.parent.mkdir(parents=True, exist_ok=True)
        multiple = config.size_multiple
        sample = torch.zeros(1, config.in_channels, 2 * multiple, 2 * multiple)
        axes = {0: "batch", 2: "height", 3: "width"}
        with tempfile.NamedTemporaryFile(dir=copy.parent, suffix=".part", delete=False) as handle:
            tmp = Path(handle.name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # The TorchScript-based exporter: a few seconds, where the dynamo one takes tens.
                torch.onnx.export(net, (sample,), str(tmp), dynamo=False, opset_version=17, input_names=["image"],
                                  output_names=["maps"], dynamic_axes={"image": axes, "maps": axes})
            test = np.random.default_rng(0).random((1, config.in_channels, 8 * multiple, 6 * multiple), dtype=np.float32)
            with torch.inference_mode():
                expected = net(torch.from_numpy(test)).numpy()
            session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = session.run(None, {"image": test})[0]
            if not float(np.abs(got - expected).max()) <= 1e-4:
                return None
            os.replace(tmp, copy)
        finally:
            tmp.unlink(missing_ok=True)
        return copy
    except Exception:  # noqa: BLE001  the copy is an optimisation: any failure leaves predict on torch
        return None
