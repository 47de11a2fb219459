"""The network stage's model: a U-Net made ready for inference, wrapped as a predictor.

- :func:`prepare_for_inference` makes an inference copy of the network:
  eval mode, BatchNorm folded into the convolution before it (the network
  itself already reduces channels before each bilinear up-sampling, see
  :mod:`segtool.interop.bioimageio_unet`), and channels-last
  memory layout on CPU/CUDA. Both measured faster on CPU (see
  BENCHMARKS.md); outputs agree with the plain network to ~1e-6. With
  ``precision="bf16"`` the network also runs under bfloat16 autocast
  (:mod:`segtool.model.precision`; maps differ by ~1e-2).
- :func:`make_predictor` wraps it as a NumPy batch -> activated maps
  callable for :mod:`segtool.pipeline.tiling` and :mod:`segtool.pipeline.blend`,
  optionally averaging the eight flips/rotations (test-time augmentation).
- :func:`load_for_inference` (and its per-process cache) loads a model file
  and prepares its network.
"""

from __future__ import annotations

import copy as _copy
import functools
import os
from collections.abc import Callable

import numpy as np

__all__ = [
    "load_for_inference",
    "load_for_inference_cached",
    "make_predictor",
    "network_device_type",
    "network_precision",
    "prepare_for_inference",
    "prepared_net",
]


def _torch():
    import torch

    return torch


def _fold_batchnorm(net) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d in a Sequential."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for module in net.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if (
                type(conv) is nn.Conv2d
                and type(norm) is nn.BatchNorm2d
                and norm.track_running_stats
                and norm.running_mean is not None
            ):
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
                folded += 1
    return folded


def prepare_for_inference(net, *, channels_last: bool | None = None, precision: str = "fp32", copy: bool = True):
    """Return an inference-only copy of a network (the original is not changed unless ``copy=False``).

    Parameters
    ----------
    net : torch.nn.Module
        Typically :class:`segtool.model.model.UNet`; other modules get the
        generic steps only.
    channels_last : bool, optional
        Use the channels-last memory layout; default on for CPU and CUDA
        (faster for convolutions there), off for other devices.
    precision : {"fp32", "bf16", "auto"}, optional
        Arithmetic of the forward pass (:func:`segtool.model.precision.resolve_precision`).
    copy : bool, optional
        False prepares ``net`` itself (no deep copy: faster start-up when the
        network was just loaded and has no other use).

    Returns
    -------
    prepared : torch.nn.Module
        In eval mode, gradients off, BatchNorm folded into the preceding
        convolutions. Has ``segtool_channels_last``
        and ``segtool_precision`` set so :func:`make_predictor` lays inputs
        out and runs the network to match.

    Examples
    --------
    >>> from segtool.model.config import UNetConfig
    >>> from segtool.model.model import UNet
    >>> torch = _torch()
    >>> net = UNet(UNetConfig(depth=2, base_channels=4)).eval()
    >>> fast = prepare_for_inference(net)
    >>> x = torch.rand(1, 1, 16, 16)
    >>> bool(torch.allclose(net(x), fast(x), atol=1e-5))
    True
    """
    torch = _torch()
    from segtool.model.precision import resolve_precision

    prepared = (_copy.deepcopy(net) if copy else net).eval()
    for parameter in prepared.parameters():
        parameter.requires_grad_(False)
    _fold_batchnorm(prepared)
    try:
        device = next(prepared.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    if channels_last is None:
        channels_last = device.type in ("cpu", "cuda")
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    prepared.segtool_channels_last = bool(channels_last)
    prepared.segtool_precision = resolve_precision(precision, device)
    prepared.segtool_prepared = True
    return prepared


def make_predictor(net, target: str, *, tta: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a network as a ``(N, C_in, h, w)`` float32 -> ``(N, C_out, h, w)`` maps function.

    Runs under ``torch.inference_mode()`` on the network's device and applies
    :func:`segtool.model.heads.activate`.

    Parameters
    ----------
    net : torch.nn.Module
        Ideally the output of :func:`prepare_for_inference`.
    target : str
        The model's target type.
    tta : bool, optional
        Average the maps over flips and, for square tiles, 90-degree
        rotations (8 transforms; 4 for non-square tiles). About that many
        times slower.

    Returns
    -------
    predictor : callable
    """
    if getattr(net, "segtool_backend", None) == "onnxruntime":
        return net.predictor(tta=tta)  # segtool.infer.onnxbackend.OnnxNet: its graph ends with the activation
    torch = _torch()
    from segtool.model.heads import activate
    from segtool.model.precision import autocast

    try:
        device = next(net.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    channels_last = bool(getattr(net, "segtool_channels_last", False))
    precision = getattr(net, "segtool_precision", "fp32")

    def run(x):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(precision, device):
            logits = net(x)
        # activation and the tile blending stay float32 whatever the network computed in
        return activate(logits.float(), target)

    def predictor(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            if device.type == "cuda":
                # page-locked host memory: the copy to the GPU runs by DMA, without a staging copy
                x = x.pin_memory().to(device, non_blocking=True)
            else:
                x = x.to(device)
            if not tta:
                maps = run(x)
            else:
                square = x.shape[-1] == x.shape[-2]
                maps = torch.zeros((), device=device)
                count = 0
                for flip in (False, True):
                    xf = torch.flip(x, dims=(-1,)) if flip else x
                    for k in range(4 if square else 2):
                        turns = k if square else 2 * k  # non-square: 0 and 180 degrees only
                        out = run(torch.rot90(xf, turns, dims=(-2, -1)))
                        out = torch.rot90(out, -turns, dims=(-2, -1))
                        maps = maps + (torch.flip(out, dims=(-1,)) if flip else out)
                        count += 1
                maps = maps / count
            return maps.float().contiguous().cpu().numpy()

    return predictor


def network_device_type(net) -> str:
    """"cpu", "cuda" or "mps": where the network's parameters live."""
    try:
        return next(net.parameters()).device.type
    except (StopIteration, AttributeError):
        return "cpu"


def network_precision(net) -> str:
    """"fp32" or "bf16": the arithmetic of a prepared network's large calls (what its tile budget is sized for)."""
    return str(getattr(net, "segtool_precision", "fp32"))


def prepared_net(model):
    """The network of ``model`` prepared for inference (once; cached on the net).

    Parameters
    ----------
    model : UNetModel
        A loaded model.

    Returns
    -------
    net : torch.nn.Module
    """
    net = model.net
    if getattr(net, "segtool_prepared", False):
        return net
    return prepare_for_inference(net)


# --------------------------------------------------------------------------- loading


def load_for_inference(path, *, device: str = "auto", threads: int | None = None, precision: str = "fp32"):
    """Load a model file and prepare its network for inference.

    ``threads`` sets PyTorch's CPU threads for this process (None leaves
    PyTorch's choice); ``precision`` is passed to :func:`prepare_for_inference`.
    """
    import torch

    from segtool.model.modelfile import load_model

    if threads:
        torch.set_num_threads(int(threads))
    model = load_model(path, device=device)
    model.net = prepare_for_inference(model.net, precision=precision, copy=False)  # just loaded: no copy needed
    return model


def load_for_inference_cached(path, *, device: str = "auto", threads: int | None = None, precision: str = "fp32"):
    """:func:`load_for_inference`, loaded once per process for the same file, device, threads and precision.

    For worker processes (``--jobs``, Dask) that segment many images with one
    model: torch modules are never pickled to them, each process loads the
    file itself, once. The file's size and modification time are part of the
    key, so a rewritten model file is loaded again.
    """
    stat = os.stat(path)
    return _cached_model(os.fspath(path), stat.st_mtime_ns, stat.st_size, device, threads, precision)


# Two entries: models are a few MB, and a process rarely uses more than one.
@functools.lru_cache(maxsize=2)
def _cached_model(path: str, mtime_ns: int, size: int, device: str, threads: int | None, precision: str):
    return load_for_inference(path, device=device, threads=threads, precision=precision)
