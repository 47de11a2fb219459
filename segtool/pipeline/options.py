"""What a prediction run is asked to do, passed whole: tiling and object options, and the tile plan.

Two small frozen dataclasses travel from the command line through every
schedule (whole image, bands, Dask blocks) unchanged:

- :class:`TileOptions`: how the network stage cuts the image (tile size,
  blending overlap or halo tiling, batch size, test-time augmentation, and
  the rescaling before the network);
- :class:`ObjectOptions`: the post-processing values that override the
  model's tuned ones (:func:`postprocess_options`).

:func:`plan_inference_tiles` turns tile options into a :class:`TilePlan` for
one image; :func:`check_common` validates the values every schedule shares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from segtool.errors import InputError
from segtool.pipeline.tiling import BLEND_BATCH_SIZE, BLEND_OVERLAP, halo_padded_shape, plan_halo_tiles, plan_tiles

__all__ = [
    "ACTIVATION_BYTES",
    "BAND_TILE_MEMORY",
    "BATCH_PIXELS",
    "MAX_TILE",
    "SEAM_HALO",
    "TILE_MEMORY",
    "activation_bytes",
    "budget_tile",
    "ObjectOptions",
    "TileOptions",
    "TilePlan",
    "check_common",
    "default_tile_halo",
    "plan_inference_tiles",
    "postprocess_options",
    "resolve_tile",
]


#: Context around each band (rows) or Dask block (pixels) when none is given (``--halo``): band mode never cuts
#: objects up to 4x this tall, block mode none under half of it.
SEAM_HALO = 128


@dataclass(frozen=True)
class TileOptions:
    """How the network stage tiles an image (see :func:`plan_inference_tiles`).

    Attributes
    ----------
    tile : int or None
        Tile size in pixels (multiple of ``2**depth``): the largest tile of
        halo tiling (default per device, :data:`MAX_TILE`), or the tile size
        with ``overlap`` (default the model's patch size).
    overlap : float or None
        Blend fixed-size tiles overlapping by this fraction instead of halo
        tiling.
    tile_halo : int or None
        Halo of halo tiling in pixels (default :func:`default_tile_halo`).
    batch_size : int or None
        Tiles per network call (default: from the tile size).
    tta : bool
        Test-time augmentation (flips and rotations, averaged).
    scale : float or None
        Resize the image by this factor before the network (in-memory
        schedule only); None estimates the objects' size in each image and
        resizes them to the model's training size
        (:mod:`segtool.infer.sizing`).

    Examples
    --------
    >>> TileOptions(tile=256, overlap=0.25)
    TileOptions(tile=256, overlap=0.25, tile_halo=None, batch_size=None, tta=False, scale=1.0)
    """

    tile: int | None = None
    overlap: float | None = None
    tile_halo: int | None = None
    batch_size: int | None = None
    tta: bool = False
    scale: float | None = 1.0

    def blended(self) -> TileOptions:
        """These options on a fixed grid of blended tiles: ``overlap`` and ``batch_size`` default to
        :data:`segtool.pipeline.tiling.BLEND_OVERLAP` and :data:`segtool.pipeline.tiling.BLEND_BATCH_SIZE` (the
        tiling of Dask blocks and of Z stacks).

        Examples
        --------
        >>> TileOptions(tile=128).blended()
        TileOptions(tile=128, overlap=0.25, tile_halo=None, batch_size=4, tta=False, scale=1.0)
        >>> TileOptions(overlap=0.1, batch_size=2).blended() == TileOptions(overlap=0.1, batch_size=2)
        True
        """
        return replace(self, overlap=BLEND_OVERLAP if self.overlap is None else self.overlap,
                       batch_size=BLEND_BATCH_SIZE if self.batch_size is None else self.batch_size)

    def check(self) -> None:
        """Raise :class:`InputError` if a value is out of range (:func:`check_common`)."""
        check_common(None, self.overlap, self.batch_size, 1.0 if self.scale is None else self.scale)

    def plan(self, config, shape: Sequence[int], *, device_type: str = "cpu", precision: str = "fp32",
             memory: int | None = None) -> TilePlan:
        """The tile plan for an image of ``shape`` (:func:`plan_inference_tiles`)."""
        return plan_inference_tiles(config, shape, device_type=device_type, tile=self.tile, overlap=self.overlap,
                                    tile_halo=self.tile_halo, batch_size=self.batch_size, precision=precision,
                                    memory=memory)


@dataclass(frozen=True)
class ObjectOptions:
    """Post-processing values that override the model's tuned ones; None keeps the model's.

    See :func:`segtool.infer.instances.maps_to_labels`; ``split_height=0``
    turns the model's shape splitting off.

    Examples
    --------
    >>> from segtool.model.config import UNetConfig
    >>> ObjectOptions(min_size=5).resolve(UNetConfig(postprocess={"prob_threshold": 0.4}))
    {'prob_threshold': 0.4, 'min_size': 5}
    """

    prob_threshold: float | None = None
    min_size: int | None = None
    seed_threshold: float | None = None
    split_height: float | None = None

    def resolve(self, config) -> dict[str, Any]:
        """Keywords for :func:`segtool.infer.instances.maps_to_labels` (:func:`postprocess_options`)."""
        return postprocess_options(config, prob_threshold=self.prob_threshold, min_size=self.min_size,
                                   seed_threshold=self.seed_threshold, split_height=self.split_height)


#: Largest tile side per device type for halo tiling. Chosen by measurement (BENCHMARKS.md): on a 2-core CPU
#: 2048^2 tiles ran as fast per pixel as smaller ones and keep recomputation at or under 1.21x for images of
#: 4096^2 and up (peak ~2 GB float32 for one tile); a GPU has the memory for 4096^2.
MAX_TILE = {"cpu": 2048, "cuda": 4096, "mps": 2048}

#: Pixels per network call when batching halo tiles (several small tiles, or one large one).
BATCH_PIXELS = {"cpu": 2048 * 2048, "cuda": 4096 * 4096, "mps": 2048 * 2048}

#: Peak memory of one network call per input pixel, in bytes, for the shipped network (depth 4, 16 base
#: channels): the peak-RSS growth of one call on a 1024^2 / 2048^2 tile, measured in fresh processes
#: (``bench/bench_tile_memory.py``; 2-core AMD EPYC): torch float32 521 / 422, onnxruntime float32 492 / 496,
#: torch bfloat16 265 / 225; rounded up here. It grows with the network's width (:func:`activation_bytes`).
ACTIVATION_BYTES = {"fp32": 520.0, "bf16": 270.0}

#: Memory budget of one network call (activations of the tile batch) by default, per device type; None = no
#: budget (a GPU's memory is not the host's; MAX_TILE alone applies). On CPU: tiles of up to 1568^2 in bfloat16,
#: 1136^2 in float32, about 0.9 GiB peak RSS for the network call alone (BENCHMARKS.md, "Memory").
TILE_MEMORY = {"cpu": 640 * 2**20, "cuda": None, "mps": None}

#: The same budget for the band schedule (images too large for memory) on CPU: there the buffers of the band
#: rows come on top of the network call, and 8192^2 stays under 1.5 GiB peak RSS only with smaller tiles
#: (1168^2 in bfloat16; at 384 MiB, 1216^2 tiles, the peak of an 8192^2 mosaic the estimate enlarges 1.375x
#: ranged 1.44-1.53 GiB over five runs; BENCHMARKS.md, "Memory").
BAND_TILE_MEMORY = 352 * 2**20

#: Keys of ``UNetConfig.postprocess`` that :func:`maps_to_labels` understands.
_POSTPROCESS_KEYS = ("prob_threshold", "min_size", "seed_threshold", "min_seed_size", "split_height")

def activation_bytes(config, precision: str = "fp32") -> float:
    """Peak memory of a network call per input pixel, in bytes (:data:`ACTIVATION_BYTES`, scaled by width).

    Examples
    --------
    >>> from segtool.model.config import UNetConfig
    >>> activation_bytes(UNetConfig(base_channels=16)), activation_bytes(UNetConfig(base_channels=32), "bf16")
    (520.0, 540.0)
    """
    per_pixel = ACTIVATION_BYTES.get(precision, ACTIVATION_BYTES["fp32"])
    return per_pixel * int(config.base_channels) / 16


def budget_tile(config, *, device_type: str = "cpu", precision: str = "fp32", memory: int | None = None) -> int:
    """The largest halo tile side (a multiple of ``2**depth``) whose network call fits :data:`TILE_MEMORY`.

    ``memory`` (bytes) replaces the device's budget where it has one (a GPU keeps none).

    At most :data:`MAX_TILE` for the device, and at least 512 (or 4 halos plus one block of ``2**depth``,
    whichever is larger), so a tile always keeps a core.

    Examples
    --------
    >>> from segtool.model.config import UNetConfig
    >>> budget_tile(UNetConfig(depth=4)), budget_tile(UNetConfig(depth=4), precision="bf16")
    (1136, 1568)
    >>> budget_tile(UNetConfig(depth=4), device_type="cuda")
    4096
    >>> budget_tile(UNetConfig(depth=4), precision="bf16", memory=BAND_TILE_MEMORY)
    1168
    """
    device_type = device_type if device_type in MAX_TILE else "cpu"
    largest = MAX_TILE[device_type]
    budget = TILE_MEMORY.get(device_type)
    if budget is None:
        return largest
    budget = budget if memory is None else int(memory)
    align = int(config.size_multiple)
    side = int(math.sqrt(budget / activation_bytes(config, precision))) // align * align
    floor = max(512, 4 * default_tile_halo(config) + align) // align * align
    return max(floor, min(largest, side))


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
    >>> from segtool.model.config import UNetConfig
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
    >>> from segtool.model.config import UNetConfig
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
        """Keywords for :func:`segtool.pipeline.tiling.predict_tiled` and ``predict_tiled_rows``."""
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
    precision: str = "fp32",
    memory: int | None = None,
) -> TilePlan:
    """Choose the tiling for an image of ``shape`` (after any rescaling).

    Without ``overlap`` (the default): halo tiling with tiles of at most
    ``tile`` (default :func:`budget_tile` for the device and the network's
    ``precision``: :data:`MAX_TILE` capped by :data:`TILE_MEMORY`) and a halo of
    ``tile_halo`` (default :func:`default_tile_halo`); an image that fits
    in one tile runs whole. With ``overlap``: tiles of ``tile`` (default the
    model's patch size) overlapping by that fraction, blended. ``memory``
    replaces the device's :data:`TILE_MEMORY` budget (:func:`budget_tile`).

    Raises
    ------
    InputError
        If ``tile`` is not a multiple of ``2**depth``, the tile leaves no core
        inside the halo, or an option is out of range.

    Examples
    --------
    >>> from segtool.model.config import UNetConfig
    >>> plan = plan_inference_tiles(UNetConfig(depth=4), (4096, 4096), precision="bf16")
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
        return TilePlan(tile_hw, float(overlap), None, align, BLEND_BATCH_SIZE if batch_size is None else int(batch_size),
                        n_tiles)
    halo = default_tile_halo(config) if tile_halo is None else int(tile_halo)
    if halo < 0:
        raise InputError(f"tile halo must be >= 0, got {halo}")
    largest = (budget_tile(config, device_type=device_type, precision=precision, memory=memory) if tile is None
               else int(tile))
    if largest < align or largest % align:
        raise InputError(f"tile must be a positive multiple of {align} for this model (2**depth), got {largest}")
    padded = halo_padded_shape(shape, align)
    plan = plan_halo_tiles(padded, largest, halo, align=align)
    (sy, sx), _ = plan[0]
    tile_hw = (sy.stop - sy.start, sx.stop - sx.start)
    if batch_size is None:
        # a batch of small tiles stays within the budget of one large tile
        batch_pixels = min(BATCH_PIXELS[device_type], max(largest, tile_hw[0]) * max(largest, tile_hw[1]))
        batch_size = max(1, min(16, batch_pixels // (tile_hw[0] * tile_hw[1])))
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
    >>> from segtool.model.config import UNetConfig
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
