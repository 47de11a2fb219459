"""The in-memory schedule: one image in, instance labels (and probability maps) out.

The stages, each a small function (see ARCHITECTURE.md for the other schedules):

1. :func:`normalize_for_model` normalises with the model's stored
   percentiles (:func:`segtool.normalize.normalize_percentile`) and
   optionally rescales;
2. :func:`predict_maps` runs the network over the tiles that
   :class:`segtool.pipeline.options.TileOptions` plan (by default large tiles
   with a halo of the network's effective context, each keeping its core, so
   the maps equal whole-image inference within 1e-3; with an ``overlap``
   fixed-size tiles blended with a Gaussian window) and blends them
   (:func:`segtool.pipeline.tiling.predict_tiled`);
3. :func:`segtool.infer.instances.maps_to_labels` turns the maps into labels
   with :class:`segtool.pipeline.options.ObjectOptions`.

:func:`predict_image` runs the three. The network itself is prepared in
:mod:`segtool.infer.network`. Images too large for memory go through
:mod:`segtool.infer.bands` (the same maps, post-processed band by band by :mod:`segtool.pipeline.bands`) and
:mod:`segtool.pipeline.bigimage` (lazy reading, tiled BigTIFF writing).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from segtool.errors import InputError, ModelError
from segtool.normalize import normalize_percentile
from segtool.pipeline.options import ObjectOptions, TileOptions, check_common
from segtool.infer.network import make_predictor, network_device_type, network_precision, prepared_net
from segtool.intake import apply_input_transform
from segtool.infer.instances import DEFAULT_MIN_SIZE, maps_to_labels
from segtool.infer.sizing import SizeEstimate, SizeOptions, estimate_for_model, min_size_at_scale, resize_channels
from segtool.pipeline.blend import timed_predictor
from segtool.pipeline.tiling import TileCallback, predict_tiled

__all__ = [
    "PredictResult",
    "estimate_from_sample",
    "find_packaged_model",
    "fit_to_training_size",
    "model_diameter",
    "normalize_for_model",
    "predict_image",
    "predict_maps",
    "scale_for_diameter",
    "scaled_objects",
]

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
        Wall time per stage: ``normalize``, ``size`` (the size estimate, when
        asked for), ``network`` (the network calls), ``tiles`` (cutting and
        stitching around them), ``postprocess``.
    scale : float
        The resize factor the network saw the image at.
    size : SizeEstimate or None
        The estimated object size, when ``tiling.scale`` was None.
    """

    labels: np.ndarray
    maps: np.ndarray
    n_tiles: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    scale: float = 1.0
    size: SizeEstimate | None = None

    @property
    def n_objects(self) -> int:
        """Number of objects (labels are consecutive, so the largest label)."""
        return int(self.labels.max()) if self.labels.size else 0


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
    >>> from segtool.model.config import UNetConfig
    >>> m = SimpleNamespace(config=UNetConfig(postprocess={"median_diameter": 20.0}), metadata={})
    >>> scale_for_diameter(m, 40)
    0.5
    """
    if not (isinstance(diameter, (int, float)) and math.isfinite(diameter) and diameter > 0):
        raise InputError(f"--diameter must be a positive number of pixels, got {diameter!r}")
    trained = model_diameter(model)
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


def model_diameter(model) -> float | None:
    """Median object diameter (pixels) of the model's training data, as its file records it; None if it does not.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from segtool.model.config import UNetConfig
    >>> model_diameter(SimpleNamespace(config=UNetConfig(), metadata={"median_diameter": 21.0}))
    21.0
    """
    config = model.config
    sources = [{k: getattr(config, k, None) for k in _DIAMETER_KEYS}, config.postprocess, model.metadata or {}]
    for source in sources:
        for key in _DIAMETER_KEYS:
            value = source.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
                return float(value)
    return None


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


def predict_image(
    image: np.ndarray,
    model,
    *,
    tiling: TileOptions = TileOptions(),
    objects: ObjectOptions = ObjectOptions(),
    on_tile: TileCallback | None = None,
) -> PredictResult:
    """Segment one image with a U-Net: normalise, tile, predict, blend, label.

    Parameters
    ----------
    image : (H, W) or (C, H, W) ndarray
        Any real dtype; normalised with the model's stored percentiles
        (``config.norm_low``, ``config.norm_high``), per channel. Not modified.
    model : LoadedModel
        From :func:`segtool.model.modelfile.load_model`. Its network is
        prepared with :func:`prepare_for_inference` unless it already is.
    tiling : TileOptions, optional
        Tiles, batch size, test-time augmentation, and ``scale``: resize the
        image by this factor before the network and map the result back to
        the original size (use when objects are larger or smaller than in the
        training data; see :func:`scale_for_diameter`); None estimates the
        objects' size and brings them to the model's training size
        (:func:`fit_to_training_size`).
    objects : ObjectOptions, optional
        Override the model's tuned post-processing values (see
        :func:`segtool.infer.instances.maps_to_labels`).
    on_tile : callable, optional
        ``on_tile(done, total)`` progress callback.

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
    >>> from segtool.model.config import UNetConfig
    >>> from segtool.model.model import UNet
    >>> from segtool.model.modelfile import LoadedModel
    >>> config = UNetConfig(depth=2, base_channels=4, patch_size=16)
    >>> model = LoadedModel(net=UNet(config).eval(), config=config)
    >>> result = predict_image(np.zeros((20, 30), np.uint8), model)
    >>> result.labels.shape, result.maps.shape, result.n_tiles
    ((20, 30), (3, 20, 30), 1)
    """
    start_time = time.perf_counter()
    tiling.check()
    stages: dict[str, float] = {}
    size = None
    with _timed(stages, "normalize"):
        normalized = normalize_for_model(image, model, scale=1.0 if tiling.scale is None else tiling.scale)
    if tiling.scale is None:
        with _timed(stages, "size"):
            normalized, size = fit_to_training_size(normalized, model, objects=objects)
    scale = size.scale if size is not None else float(tiling.scale)
    maps, n_tiles = predict_maps(normalized, model, np.shape(image)[-2:], tiling=tiling, on_tile=on_tile, stages=stages)
    del normalized
    with _timed(stages, "postprocess"):
        labels = maps_to_labels(maps, target=model.config.target, **scaled_objects(objects, model.config, scale))
    return PredictResult(labels=labels, maps=maps, n_tiles=n_tiles, seconds=time.perf_counter() - start_time,
                         stage_seconds=stages, scale=scale, size=size)


def scaled_objects(objects: ObjectOptions, config, scale: float) -> dict:
    """Post-processing keywords for labels at the image's size when the network saw it at ``scale``.

    The model's tuned ``min_size`` (and ``min_seed_size``) count pixels at its
    training size, so they are divided by ``scale**2``; a ``min_size`` given
    by the user counts the image's own pixels and is kept.

    Examples
    --------
    >>> from segtool.model.config import UNetConfig
    >>> scaled_objects(ObjectOptions(), UNetConfig(postprocess={"min_size": 30}), 0.5)["min_size"]
    120
    >>> scaled_objects(ObjectOptions(min_size=30), UNetConfig(), 0.5)["min_size"]
    30
    """
    options = objects.resolve(config)
    if scale != 1.0:
        if objects.min_size is None and "min_size" in options:
            options["min_size"] = min_size_at_scale(options["min_size"], scale)
        elif objects.min_size is None:
            options["min_size"] = min_size_at_scale(DEFAULT_MIN_SIZE, scale)
        if options.get("min_seed_size"):
            options["min_seed_size"] = min_size_at_scale(options["min_seed_size"], scale)
    return options


def fit_to_training_size(normalized: np.ndarray, model, *, objects: ObjectOptions = ObjectOptions(),
                         options: SizeOptions = SizeOptions()) -> tuple[np.ndarray, SizeEstimate | None]:
    """Estimate the objects' size in a normalised image and resize it to the model's training size.

    Parameters
    ----------
    normalized : (C, H, W) ndarray of float32
        From :func:`normalize_for_model` at scale 1.
    model : LoadedModel
    objects : ObjectOptions, optional
        Post-processing of the estimate's passes.
    options : SizeOptions, optional

    Returns
    -------
    normalized : (C, h, w) ndarray of float32
        The image at the chosen scale (``normalized`` itself at scale 1).
    size : SizeEstimate or None
        None when the model does not record its training diameter (the image
        is then left at its size).
    """
    trained = model_diameter(model)
    if trained is None:
        return normalized, None
    size = estimate_for_model(normalized, model, objects=objects.resolve(model.config), trained_diameter=trained,
                              options=options)
    if size.scale != 1.0:
        height, width = normalized.shape[1:]
        normalized = resize_channels(normalized, (max(1, round(height * size.scale)), max(1, round(width * size.scale))))
    return normalized, size


def estimate_from_sample(read: Callable[[slice, slice, int], np.ndarray], shape: Sequence[int], model, *,
                         percentiles: tuple[float, float], objects: ObjectOptions = ObjectOptions(),
                         options: SizeOptions = SizeOptions()) -> SizeEstimate | None:
    """The object size of an image too large to read whole, from the part of it the estimate looks at.

    One pass reads a thumbnail (``read(rows, cols, step)`` with
    :func:`segtool.infer.sizing.thumbnail_step`) to find the densest
    foreground; then only the ladder's widest window around it
    (:func:`segtool.infer.sizing.sample_window`, 3072² by default) is read
    and estimated as :func:`fit_to_training_size` would the whole image. An
    image no larger than that window is read whole, so the estimate is the
    whole image's.

    Parameters
    ----------
    read : callable
        ``read(rows, cols, step)`` returns ``image[rows, cols][::step, ::step]``
        (one plane, after the model's input transform), e.g. from a Dask
        array or a lazily read TIFF.
    shape : (H, W)
    model : LoadedModel
        A one-channel model.
    percentiles : (float, float)
        The image values mapped to 0 and 1 (the whole image's).
    objects, options : optional
        As in :func:`fit_to_training_size`.

    Returns
    -------
    SizeEstimate or None
        None when the model does not record its training diameter.

    Examples
    --------
    >>> from segtool.model.config import UNetConfig
    >>> from segtool.model.model import UNet
    >>> from segtool.model.modelfile import LoadedModel
    >>> config = UNetConfig(depth=2, base_channels=4, patch_size=16, postprocess={"median_diameter": 20.0})
    >>> model = LoadedModel(net=UNet(config).eval(), config=config)
    >>> image = np.zeros((64, 80), np.uint8)
    >>> size = estimate_from_sample(lambda r, c, k: image[r, c][::k, ::k], image.shape, model, percentiles=(0, 1))
    >>> size == estimate_for_model(np.zeros((1, 64, 80), np.float32), model, objects={}, trained_diameter=20.0)
    True
    """
    from segtool.normalize import map_to_unit
    from segtool.infer.sizing import sample_window, thumbnail_step

    trained = model_diameter(model)
    if trained is None:
        return None
    height, width = (int(n) for n in shape)
    full = (slice(0, height), slice(0, width))
    rows, cols = full
    if max(height, width) > math.ceil(options.window / min(options.scales)):  # else the whole image is the sample
        step = thumbnail_step((height, width))
        rows, cols = sample_window(read(*full, step), step, (height, width), options)
    window = np.asarray(read(rows, cols, 1), dtype=np.float32)
    if not np.isfinite(window).all():
        raise InputError("image contains NaN or infinite values")
    normalized = map_to_unit(window, *percentiles)[np.newaxis]
    return estimate_for_model(normalized, model, objects=objects.resolve(model.config), trained_diameter=trained,
                              options=options)


class _timed:
    """Add the wall time of a ``with`` block to ``stages[name]``."""

    def __init__(self, stages: dict[str, float] | None, name: str) -> None:
        self.stages, self.name = stages, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        if self.stages is not None:
            self.stages[self.name] = self.stages.get(self.name, 0.0) + time.perf_counter() - self.start


def normalize_for_model(image: np.ndarray, model, *, scale: float = 1.0) -> np.ndarray:
    """The network input for an image: per-channel percentile normalisation, then optional rescaling.

    The percentiles leave out a few objects far brighter than the rest
    (:func:`segtool.normalize.robust_percentiles`), so saturated mitotic or
    dead cells do not dim the ordinary nuclei; without such outliers they are
    the plain per-image percentiles the model was trained with.

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
    normalized = np.stack([normalize_percentile(c, config.norm_low, config.norm_high, robust=True) for c in data])
    if scale != 1.0:
        height, width = normalized.shape[1:]
        normalized = resize_channels(normalized, (max(1, round(height * scale)), max(1, round(width * scale))))
    return normalized


def predict_maps(
    normalized: np.ndarray,
    model,
    shape: Sequence[int],
    *,
    tiling: TileOptions = TileOptions(),
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
    tiling : TileOptions, optional
        As in :func:`predict_image` (``scale`` is not used: ``normalized``
        is already rescaled).
    on_tile : callable, optional
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
    check_common(model, tiling.overlap, tiling.batch_size, 1.0)
    start = time.perf_counter()
    network_before = (stages or {}).get("network", 0.0)
    net = prepared_net(model)
    plan = tiling.plan(config, normalized.shape[1:], device_type=network_device_type(net),
                       precision=network_precision(net))
    predictor = timed_predictor(make_predictor(net, config.target, tta=tiling.tta), stages)
    maps = predict_tiled(normalized, predictor, out_channels=config.out_channels, on_tile=on_tile,
                         **plan.tiling_options())
    height, width = (int(n) for n in shape)
    if maps.shape[1:] != (height, width):
        maps = resize_channels(maps, (height, width))
    if stages is not None:
        network = stages.get("network", 0.0) - network_before
        stages["tiles"] = stages.get("tiles", 0.0) + time.perf_counter() - start - network
    return maps, plan.n_tiles
