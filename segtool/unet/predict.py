"""U-Net inference: an image in, instance labels (and probability maps) out.

The steps, each a small function:

1. :func:`prepare_for_inference` makes an inference copy of the network:
   eval mode, BatchNorm folded into the convolution before it, the 1x1
   channel reduction of each up-sampling step moved before the bilinear
   up-sampling (the two are linear and commute, so the result is the same
   and the convolution runs on a quarter of the pixels), and channels-last
   memory layout on CPU/CUDA. All three measured faster on CPU (see
   BENCHMARKS.md); outputs agree with the plain network to ~1e-6. With
   ``precision="bf16"`` the network also runs under bfloat16 autocast
   (:mod:`segtool.unet.precision`; maps differ by ~1e-2).
2. :func:`make_predictor` wraps it as a NumPy batch -> activated maps
   callable for :mod:`segtool.unet.tiling`, optionally averaging the eight
   flips/rotations (test-time augmentation).
3. :func:`plan_inference_tiles` decides the tiling: by default large tiles
   (per device) with a halo of the network's effective context, each tile
   keeping only its core, so the maps equal whole-image inference within
   1e-3; with an ``overlap`` the classic fixed-size tiles blended with a
   Gaussian window.
4. :func:`predict_image` normalises with the model's stored percentiles,
   optionally rescales, predicts tile by tile and turns the maps into
   labels with :func:`segtool.unet.instances.maps_to_labels`.

Images too large for memory go through :mod:`segtool.unet.bands` (the same
maps, post-processed band by band) and :mod:`segtool.unet.bigimage` (lazy
reading, tiled BigTIFF writing).
"""

from __future__ import annotations

import copy as _copy
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segtool.errors import InputError, ModelError
from segtool.normalize import normalize_percentile
from segtool.unet.intake import apply_input_transform
from segtool.unet.instances import maps_to_labels
from segtool.unet.tiling import TileCallback, halo_padded_shape, plan_halo_tiles, plan_tiles, predict_tiled

__all__ = [
    "MAX_TILE",
    "PredictResult",
    "TilePlan",
    "default_tile_halo",
    "plan_inference_tiles",
    "find_packaged_model",
    "load_for_inference",
    "load_for_inference_cached",
    "make_predictor",
    "network_device_type",
    "normalize_for_model",
    "predict_maps",
    "timed_predictor",
    "postprocess_options",
    "predict_image",
    "prepare_for_inference",
    "resolve_tile",
    "scale_for_diameter",
    "check_common",
    "prepared_net",
]

#: Largest tile side per device type for halo tiling. Chosen by measurement (BENCHMARKS.md): on a 2-core CPU
#: 2048^2 tiles ran as fast per pixel as smaller ones and keep recomputation at or under 1.21x for images of
#: 4096^2 and up (peak ~2 GB float32 for one tile); a GPU has the memory for 4096^2.
MAX_TILE = {"cpu": 2048, "cuda": 4096, "mps": 2048}

#: Pixels per network call when batching halo tiles (several small tiles, or one large one).
BATCH_PIXELS = {"cpu": 2048 * 2048, "cuda": 4096 * 4096, "mps": 2048 * 2048}

#: Keys of ``UNetConfig.postprocess`` that :func:`maps_to_labels` understands.
_POSTPROCESS_KEYS = ("prob_threshold", "min_size", "seed_threshold", "min_seed_size", "split_height")

#: Keys under which a model may record the median object diameter (pixels) of its training data.
_DIAMETER_KEYS = ("median_diameter", "object_diameter", "diameter")


@dataclass
class PredictResult:
    """What :func:`predict_image` returns.

    Attributes
    ----------
    labels : (H, W) ndarray of uint16 or uint32
        Instance labels, 0 background, 1..N objects.
    maps : (C, H, W) ndarray of float32
        Blended activated network maps at the image's size (background /
        interior / boundary probabilities, or foreground probability and
        normalised distance).
    n_tiles : int
        Tiles the network ran on (per TTA transform).
    seconds : float
        Wall time of the whole call.
    stage_seconds : dict of str to float
        Wall time per stage: ``normalize``, ``network`` (the network calls),
        ``tiles`` (cutting and stitching around them), ``postprocess``.
    """

    labels: np.ndarray
    maps: np.ndarray
    n_tiles: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def n_objects(self) -> int:
        """Number of objects (labels are consecutive, so the largest label)."""
        return int(self.labels.max()) if self.labels.size else 0


# --------------------------------------------------------------------------- network preparation


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


def _reduce_before_upsampling(net) -> int:
    """Swap "bilinear 2x up-sample, then 1x1 conv" for the equivalent, cheaper reverse order.

    A 1x1 convolution mixes channels per pixel and bilinear interpolation
    mixes pixels per channel with weights that sum to one, so they commute
    (bias included); running the convolution first does it on 4x fewer pixels.
    """
    from torch import nn

    from segtool.unet import model as unet_model

    up_type = getattr(unet_model, "_Up", None)
    if up_type is None:
        return 0

    class _ReduceFirstUp(nn.Module):
        def __init__(self, up) -> None:
            super().__init__()
            self.reduce = up.reduce
            self.conv = up.conv

        def forward(self, x, skip):
            torch = _torch()
            x = nn.functional.interpolate(self.reduce(x), scale_factor=2, mode="bilinear", align_corners=False)
            return self.conv(torch.cat([skip, x], dim=1))

    swapped = 0
    for module in net.modules():
        for name, child in list(module._modules.items()):
            if (
                type(child) is up_type
                and type(getattr(child, "reduce", None)) is nn.Conv2d
                and child.reduce.kernel_size == (1, 1)
                and set(child._modules) == {"reduce", "conv"}
            ):
                module._modules[name] = _ReduceFirstUp(child)
                swapped += 1
    return swapped


def prepare_for_inference(net, *, channels_last: bool | None = None, precision: str = "fp32", copy: bool = True):
    """Return an inference-only copy of a network (the original is not changed unless ``copy=False``).

    Parameters
    ----------
    net : torch.nn.Module
        Typically :class:`segtool.unet.model.UNet`; other modules get the
        generic steps only.
    channels_last : bool, optional
        Use the channels-last memory layout; default on for CPU and CUDA
        (faster for convolutions there), off for other devices.
    precision : {"fp32", "bf16", "auto"}, optional
        Arithmetic of the forward pass (:func:`segtool.unet.precision.resolve_precision`).
    copy : bool, optional
        False prepares ``net`` itself (no deep copy: faster start-up when the
        network was just loaded and has no other use).

    Returns
    -------
    prepared : torch.nn.Module
        In eval mode, gradients off, BatchNorm folded into the preceding
        convolutions, up-sampling reordered. Has ``segtool_channels_last``
        and ``segtool_precision`` set so :func:`make_predictor` lays inputs
        out and runs the network to match.

    Examples
    --------
    >>> from segtool.unet.config import UNetConfig
    >>> from segtool.unet.model import UNet
    >>> torch = _torch()
    >>> net = UNet(UNetConfig(depth=2, base_channels=4)).eval()
    >>> fast = prepare_for_inference(net)
    >>> x = torch.rand(1, 1, 16, 16)
    >>> bool(torch.allclose(net(x), fast(x), atol=1e-5))
    True
    """
    torch = _torch()
    from segtool.unet.precision import resolve_precision

    prepared = (_copy.deepcopy(net) if copy else net).eval()
    for parameter in prepared.parameters():
        parameter.requires_grad_(False)
    _fold_batchnorm(prepared)
    _reduce_before_upsampling(prepared)
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
    :func:`segtool.unet.heads.activate`.

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
    torch = _torch()
    from segtool.unet.heads import activate
    from segtool.unet.precision import autocast

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


# --------------------------------------------------------------------------- options


def load_for_inference(path, *, device: str = "auto", threads: int | None = None, precision: str = "fp32"):
    """Load a model file and prepare its network for inference.

    ``threads`` sets PyTorch's CPU threads for this process (None leaves
    PyTorch's choice); ``precision`` is passed to :func:`prepare_for_inference`.
    """
    import torch

    from segtool.unet.modelfile import load_model

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


def resolve_tile(config, shape: Sequence[int], tile: int | None = None) -> tuple[int, int]:
    """Tile size for an image: ``tile`` (default the model's patch size), shrunk for small images.

    An axis shorter than the tile gets a tile of the axis length rounded up
    to the network's size multiple (``2**depth``), so a small image is padded
    by at most ``2**depth - 1`` pixels instead of to a full tile.

    Raises
    ------
    InputError
        If ``tile`` is not a positive multiple of ``2**depth``.

    Examples
    --------
    >>> from segtool.unet.config import UNetConfig
    >>> resolve_tile(UNetConfig(depth=4, patch_size=256), (100, 3000))
    (112, 256)
    """
    multiple = int(config.size_multiple)
    size = int(config.patch_size if tile is None else tile)
    if size < multiple or size % multiple:
        raise InputError(f"tile must be a positive multiple of {multiple} for this model (2**depth), got {size}")
    return tuple(min(size, multiple * math.ceil(int(n) / multiple)) for n in shape)  # type: ignore[return-value]


def default_tile_halo(config) -> int:
    """Halo for halo tiling: the network's effective context, estimated from its depth.

    A U-Net of depth ``d`` (two 3x3 convolutions per level, 2x pooling and
    bilinear up-sampling) sees at most ``9 * 2**d - 7`` pixels to each side;
    an input change that far away moves the output by exactly 0. The
    *effective* context, where a change still moves the output by more than
    1e-3, is smaller: 100 px for the shipped depth-4 model
    (``bench/bench_context.py``), 0.73 of the 137 px bound. The default is
    0.75 of the bound, rounded up to a multiple of 8 (104 px for depth 4).
    Measure a model of your own with ``bench/bench_context.py`` and pass
    ``tile_halo`` (``--tile-halo``) if it needs more.

    Examples
    --------
    >>> from segtool.unet.config import UNetConfig
    >>> default_tile_halo(UNetConfig(depth=4)), default_tile_halo(UNetConfig(depth=2))
    (104, 24)
    """
    bound = 9 * 2 ** int(config.depth) - 7
    return 8 * math.ceil(0.75 * bound / 8)


@dataclass(frozen=True)
class TilePlan:
    """How an image is cut into network tiles (see :func:`plan_inference_tiles`).

    Attributes
    ----------
    tile : (int, int)
        Tile size (halo tiling: the largest tile; the plan may use smaller).
    overlap : float or None
        Blending overlap, or None for halo tiling.
    tile_halo : int or None
        Halo of halo tiling, or None when blending.
    align : int
        ``2**depth``: halo tiles start at multiples of it.
    batch_size : int
        Tiles per network call.
    n_tiles : int
        Tiles the network runs on.
    """

    tile: tuple[int, int]
    overlap: float | None
    tile_halo: int | None
    align: int
    batch_size: int
    n_tiles: int

    def tiling_options(self) -> dict[str, Any]:
        """Keywords for :func:`segtool.unet.tiling.predict_tiled` and ``predict_tiled_rows``."""
        return {"tile": self.tile, "overlap": 0.0 if self.overlap is None else self.overlap, "tile_halo": self.tile_halo,
                "align": self.align, "batch_size": self.batch_size}


def plan_inference_tiles(
    config,
    shape: Sequence[int],
    *,
    device_type: str = "cpu",
    tile: int | None = None,
    overlap: float | None = None,
    tile_halo: int | None = None,
    batch_size: int | None = None,
) -> TilePlan:
    """Choose the tiling for an image of ``shape`` (after any rescaling).

    Without ``overlap`` (the default): halo tiling with tiles of at most
    ``tile`` (default :data:`MAX_TILE` for the device) and a halo of
    ``tile_halo`` (default :func:`default_tile_halo`); an image that fits
    in one tile runs whole. With ``overlap``: tiles of ``tile`` (default the
    model's patch size) overlapping by that fraction, blended.

    Raises
    ------
    InputError
        If ``tile`` is not a multiple of ``2**depth``, the tile leaves no core
        inside the halo, or an option is out of range.

    Examples
    --------
    >>> from segtool.unet.config import UNetConfig
    >>> plan = plan_inference_tiles(UNetConfig(depth=4), (4096, 4096))
    >>> plan.tile_halo, plan.n_tiles, plan.batch_size
    (104, 9, 1)
    >>> plan_inference_tiles(UNetConfig(depth=4, patch_size=128), (256, 256), overlap=0.25).n_tiles
    9
    """
    align = int(config.size_multiple)
    device_type = device_type if device_type in MAX_TILE else "cpu"
    if overlap is not None:
        tile_hw = resolve_tile(config, shape, tile)
        padded = tuple(max(n, t) for n, t in zip(shape, tile_hw))
        n_tiles = len(plan_tiles(padded, tile_hw, overlap))
        return TilePlan(tile_hw, float(overlap), None, align, 4 if batch_size is None else int(batch_size), n_tiles)
    halo = default_tile_halo(config) if tile_halo is None else int(tile_halo)
    if halo < 0:
        raise InputError(f"tile halo must be >= 0, got {halo}")
    largest = MAX_TILE[device_type] if tile is None else int(tile)
    if largest < align or largest % align:
        raise InputError(f"tile must be a positive multiple of {align} for this model (2**depth), got {largest}")
    padded = halo_padded_shape(shape, align)
    plan = plan_halo_tiles(padded, largest, halo, align=align)
    (sy, sx), _ = plan[0]
    tile_hw = (sy.stop - sy.start, sx.stop - sx.start)
    if batch_size is None:
        batch_size = max(1, min(16, BATCH_PIXELS[device_type] // (tile_hw[0] * tile_hw[1])))
    return TilePlan(tile_hw, None, halo, align, int(batch_size), len(plan))


def postprocess_options(
    config,
    *,
    prob_threshold: float | None = None,
    min_size: int | None = None,
    seed_threshold: float | None = None,
    split_height: float | None = None,
) -> dict[str, Any]:
    """Post-processing keywords for :func:`maps_to_labels`: the model's tuned values, then overrides.

    ``split_height=0`` turns off the model's shape splitting.

    Examples
    --------
    >>> from segtool.unet.config import UNetConfig
    >>> cfg = UNetConfig(postprocess={"prob_threshold": 0.4, "min_size": 30, "note": "x"})
    >>> postprocess_options(cfg, min_size=5)
    {'prob_threshold': 0.4, 'min_size': 5}
    """
    options = {k: config.postprocess[k] for k in _POSTPROCESS_KEYS if config.postprocess.get(k) is not None}
    for key, value in (("prob_threshold", prob_threshold), ("min_size", min_size), ("seed_threshold", seed_threshold),
                       ("split_height", split_height)):
        if value is not None:
            options[key] = value
    if options.get("split_height") == 0:
        del options["split_height"]
    return options


def scale_for_diameter(model, diameter: float) -> float:
    """Scale factor that brings objects of ``diameter`` pixels to the model's training size.

    Raises
    ------
    InputError
        If ``diameter`` is not positive.
    ModelError
        If the model does not record the median object diameter of its
        training data.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from segtool.unet.config import UNetConfig
    >>> m = SimpleNamespace(config=UNetConfig(postprocess={"median_diameter": 20.0}), metadata={})
    >>> scale_for_diameter(m, 40)
    0.5
    """
    if not (isinstance(diameter, (int, float)) and math.isfinite(diameter) and diameter > 0):
        raise InputError(f"--diameter must be a positive number of pixels, got {diameter!r}")
    trained = _model_diameter(model)
    if trained is None:
        raise ModelError("this model does not record the object diameter it was trained on; use --scale instead of --diameter")
    return float(trained) / float(diameter)


def find_packaged_model(name: str = "nuclei.pt"):
    """Path of a pretrained model shipped inside the segtool package (``segtool/models/``).

    Raises
    ------
    ModelError
        If this installation has no such model.
    """
    from importlib import resources
    from pathlib import Path

    try:
        candidate = resources.files("segtool").joinpath("models", name)
        if candidate.is_file():
            return Path(str(candidate))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
        pass
    raise ModelError("no pretrained model is installed in this segtool; pass -m MODEL (train one with `segtool train`)")


def _model_diameter(model) -> float | None:
    config = model.config
    sources = [{k: getattr(config, k, None) for k in _DIAMETER_KEYS}, config.postprocess, model.metadata or {}]
    for source in sources:
        for key in _DIAMETER_KEYS:
            value = source.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
                return float(value)
    return None


def check_common(model, overlap: float | None, batch_size: int | None, scale: float) -> None:
    """Validate the options shared by every prediction schedule.

    Parameters
    ----------
    model : UNetModel
        A loaded model.
    overlap : float or None
        Tile overlap fraction, in [0, 1).
    batch_size : int or None
        Tiles per forward pass, >= 1.
    scale : float
        Rescale factor, 0.05 to 20.

    Raises
    ------
    InputError
        If any value is out of range.
    """
    if overlap is not None and not 0 <= float(overlap) < 1:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    if not (math.isfinite(float(scale)) and 0.05 <= float(scale) <= 20):
        raise InputError(f"scale must be between 0.05 and 20, got {scale}")


def _as_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """Return (C, H, W) for a (H, W) or (C, H, W) image, checking C against the model."""
    data = np.asarray(image)
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3 or 0 in data.shape:
        raise InputError(f"image must be 2-D (Y, X) or (C, Y, X), got shape {np.shape(image)}")
    if data.shape[0] != in_channels:
        raise ModelError(
            f"model expects {in_channels} input channel{'s' if in_channels != 1 else ''}, "
            f"the image has {data.shape[0]}"
            + ("; pick one with --channel" if data.shape[0] > in_channels == 1 else "")
        )
    if data.dtype.kind not in "uifb":
        raise InputError(f"unsupported pixel type {data.dtype}")
    return data


# --------------------------------------------------------------------------- in-memory prediction


def _resize(data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (C, H, W) float32 to (C, *shape), anti-aliased when shrinking."""
    from skimage.transform import resize

    if tuple(data.shape[1:]) == tuple(shape):
        return data
    shrinking = shape[0] < data.shape[1] or shape[1] < data.shape[2]
    out = resize(
        data,
        (data.shape[0],) + tuple(shape),
        order=1,
        mode="reflect",
        anti_aliasing=shrinking,
        preserve_range=True,
    )
    return out.astype(np.float32, copy=False)


def predict_image(
    image: np.ndarray,
    model,
    *,
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int | None = None,
    tta: bool = False,
    scale: float = 1.0,
    prob_threshold: float | None = None,
    min_size: int | None = None,
    seed_threshold: float | None = None,
    split_height: float | None = None,
    on_tile: TileCallback | None = None,
    tile_halo: int | None = None,
) -> PredictResult:
    """Segment one image with a U-Net: normalise, tile, predict, blend, label.

    Parameters
    ----------
    image : (H, W) or (C, H, W) ndarray
        Any real dtype; normalised with the model's stored percentiles
        (``config.norm_low``, ``config.norm_high``), per channel. Not modified.
    model : LoadedModel
        From :func:`segtool.unet.modelfile.load_model`. Its network is
        prepared with :func:`prepare_for_inference` unless it already is.
    tile : int, optional
        Tile size in pixels (multiple of ``2**depth``): the largest tile of
        halo tiling (default per device, :data:`MAX_TILE`), or the tile size
        with ``overlap`` (default the model's patch size).
    overlap : float, optional
        Blend fixed-size tiles overlapping by this fraction instead of halo
        tiling (see :func:`plan_inference_tiles`).
    batch_size : int, optional
        Tiles per network call (default: from the tile size).
    tta : bool, optional
        Test-time augmentation (flips and rotations, averaged).
    scale : float, optional
        Resize the image by this factor before the network and map the
        result back to the original size (use when objects are larger or
        smaller than in the training data; see :func:`scale_for_diameter`).
    prob_threshold, min_size, seed_threshold, split_height : optional
        Override the model's tuned post-processing values (see
        :func:`segtool.unet.instances.maps_to_labels`; ``split_height=0``
        turns shape splitting off).
    on_tile : callable, optional
        ``on_tile(done, total)`` progress callback.
    tile_halo : int, optional
        Halo of halo tiling in pixels (default :func:`default_tile_halo`).

    Returns
    -------
    PredictResult
        ``labels`` and ``maps`` at the input's size.

    Raises
    ------
    ModelError
        If the image's channel count does not match the model.
    InputError
        If an option is out of range or the image is not usable.

    Examples
    --------
    >>> from segtool.unet.config import UNetConfig
    >>> from segtool.unet.model import UNet
    >>> from segtool.unet.modelfile import LoadedModel
    >>> config = UNetConfig(depth=2, base_channels=4, patch_size=16)
    >>> model = LoadedModel(net=UNet(config).eval(), config=config)
    >>> result = predict_image(np.zeros((20, 30), np.uint8), model)
    >>> result.labels.shape, result.maps.shape, result.n_tiles
    ((20, 30), (3, 20, 30), 1)
    """
    start_time = time.perf_counter()
    check_common(model, overlap, batch_size, scale)
    options = postprocess_options(model.config, prob_threshold=prob_threshold, min_size=min_size,
                                  seed_threshold=seed_threshold, split_height=split_height)
    stages: dict[str, float] = {}
    with _timed(stages, "normalize"):
        normalized = normalize_for_model(image, model, scale=scale)
    maps, n_tiles = predict_maps(normalized, model, np.shape(image)[-2:], tile=tile, overlap=overlap,
                                 batch_size=batch_size, tta=tta, tile_halo=tile_halo, on_tile=on_tile, stages=stages)
    del normalized
    with _timed(stages, "postprocess"):
        labels = maps_to_labels(maps, target=model.config.target, **options)
    return PredictResult(labels=labels, maps=maps, n_tiles=n_tiles, seconds=time.perf_counter() - start_time,
                         stage_seconds=stages)


class _timed:
    """Add the wall time of a ``with`` block to ``stages[name]``."""

    def __init__(self, stages: dict[str, float] | None, name: str) -> None:
        self.stages, self.name = stages, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        if self.stages is not None:
            self.stages[self.name] = self.stages.get(self.name, 0.0) + time.perf_counter() - self.start


def timed_predictor(predictor: Callable[[np.ndarray], np.ndarray], stages: dict[str, float] | None,
                    name: str = "network") -> Callable[[np.ndarray], np.ndarray]:
    """``predictor``, adding the wall time of each call to ``stages[name]`` (no-op when ``stages`` is None)."""
    if stages is None:
        return predictor

    def timed(batch: np.ndarray) -> np.ndarray:
        with _timed(stages, name):
            return predictor(batch)

    return timed


def normalize_for_model(image: np.ndarray, model, *, scale: float = 1.0) -> np.ndarray:
    """The network input for an image: per-channel percentile normalisation, then optional rescaling.

    The first stage of :func:`predict_image`.

    Parameters
    ----------
    image : (H, W) or (C, H, W) ndarray
        Not modified.
    model : LoadedModel
    scale : float, optional
        Resize factor (see :func:`predict_image`).

    Returns
    -------
    normalized : (C, h, w) ndarray of float32

    Raises
    ------
    ModelError
        If the channel count does not match the model.
    InputError
        If the image is unusable or ``scale`` out of range.
    """
    config = model.config
    check_common(model, None, None, scale)
    data = _as_channels(apply_input_transform(image, config.input), config.in_channels)
    normalized = np.stack([normalize_percentile(c, config.norm_low, config.norm_high) for c in data])
    if scale != 1.0:
        height, width = normalized.shape[1:]
        normalized = _resize(normalized, (max(1, round(height * scale)), max(1, round(width * scale))))
    return normalized


def predict_maps(
    normalized: np.ndarray,
    model,
    shape: Sequence[int],
    *,
    tile: int | None = None,
    overlap: float | None = None,
    batch_size: int | None = None,
    tta: bool = False,
    tile_halo: int | None = None,
    on_tile: TileCallback | None = None,
    stages: dict[str, float] | None = None,
) -> tuple[np.ndarray, int]:
    """The network stage of :func:`predict_image`: tiled maps of a normalised image, at the image's size.

    Parameters
    ----------
    normalized : (C, h, w) ndarray of float32
        From :func:`normalize_for_model`.
    model : LoadedModel
    shape : (H, W)
        Size of the original image; maps are resized back to it when the
        input was rescaled.
    tile, overlap, batch_size, tta, tile_halo, on_tile
        As in :func:`predict_image`.
    stages : dict, optional
        Receives the seconds spent in the network calls (``"network"``) and
        in the tiling around them (``"tiles"``).

    Returns
    -------
    maps : (C_out, H, W) ndarray of float32
    n_tiles : int
    """
    config = model.config
    check_common(model, overlap, batch_size, 1.0)
    start = time.perf_counter()
    network_before = (stages or {}).get("network", 0.0)
    net = prepared_net(model)
    plan = plan_inference_tiles(config, normalized.shape[1:], device_type=network_device_type(net), tile=tile,
                                overlap=overlap, tile_halo=tile_halo, batch_size=batch_size)
    predictor = timed_predictor(make_predictor(net, config.target, tta=tta), stages)
    maps = predict_tiled(normalized, predictor, out_channels=config.out_channels, on_tile=on_tile,
                         **plan.tiling_options())
    height, width = (int(n) for n in shape)
    if maps.shape[1:] != (height, width):
        maps = _resize(maps, (height, width))
    if stages is not None:
        network = stages.get("network", 0.0) - network_before
        stages["tiles"] = stages.get("tiles", 0.0) + time.perf_counter() - start - network
    return maps, plan.n_tiles
