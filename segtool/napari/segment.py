"""What the napari widget computes: one 2-D image in, labels out (no napari, no Qt).

:func:`segment` runs the U-Net or the baseline with the options of a
:class:`SegmentOptions`, reporting progress through a callback;
:func:`image_plane` picks the 2-D image out of a layer's data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from segtool.errors import InputError

__all__ = ["METHODS", "POLARITIES", "PRECISIONS", "THRESHOLDS", "SegmentOptions", "check_model", "image_plane",
           "segment"]

METHODS = ("U-Net", "baseline")
THRESHOLDS = ("otsu", "li", "triangle", "yen")
POLARITIES = ("bright", "dark", "auto")
#: ``segtool predict --precision`` values (:data:`segtool.model.precision.PRECISIONS`, kept here so that building
#: the widget does not import torch; a test checks that they agree).
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class SegmentOptions:
    """What the widget runs.

    Attributes
    ----------
    method : {"U-Net", "baseline"}
    model : str or None
        U-Net: what ``segtool predict -m`` takes: a shipped model's name
        (``segtool model list``), a segtool model file (``.pt``) or segtool
        bioimage.io package (``.zip``); None for the default shipped model.
    tta : bool
        U-Net: average the eight flips/rotations.
    precision : {"auto", "fp32", "bf16"}
        U-Net: the network's arithmetic, as ``segtool predict --precision``
        (``auto``, its default: bf16 where the hardware runs it natively), so
        that the widget and the CLI give the same labels.
    degree, threshold, polarity, min_size, split, smooth, fill_holes
        Baseline options, as ``segtool baseline`` (``min_size`` None keeps the
        method's default; for the U-Net it overrides the model's tuned value).
    """

    method: str = "U-Net"
    model: str | None = None
    tta: bool = False
    precision: str = "auto"
    degree: int = 2
    threshold: str = "otsu"
    polarity: str = "bright"
    min_size: int | None = None
    split: bool = False
    smooth: float = 0.0
    fill_holes: bool = False

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.threshold not in THRESHOLDS:
            raise InputError(f"threshold must be one of {', '.join(THRESHOLDS)}, got {self.threshold!r}")
        if self.polarity not in POLARITIES:
            raise InputError(f"polarity must be one of {', '.join(POLARITIES)}, got {self.polarity!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def image_plane(data: Any, *, rgb: bool = False, keep_colour: bool = False,
                current_step: tuple[int, ...] = ()) -> np.ndarray:
    """The 2-D image the widget segments: the layer itself, RGB averaged or kept, or the displayed plane of a stack.

    Parameters
    ----------
    data : array_like
        A napari image layer's data (a multiscale layer gives its first level).
    rgb : bool, optional
        The last axis holds colours.
    keep_colour : bool, optional
        With ``rgb``: return the red, green and blue planes, ``(3, Y, X)``
        (channels first, as :func:`segtool.io.read_image` reads colour), for
        :func:`segment` to hand to a model that reads colour; otherwise the
        colours are averaged to grey.
    current_step : tuple of int, optional
        The viewer's position on every axis; the leading axes of a stack are
        indexed with it.

    Examples
    --------
    >>> image_plane(np.arange(24).reshape(2, 3, 4), current_step=(1, 0, 0)).shape
    (3, 4)
    >>> image_plane(np.ones((3, 4, 3)), rgb=True).shape
    (3, 4)
    >>> image_plane(np.ones((3, 4, 3)), rgb=True, keep_colour=True).shape
    (3, 3, 4)
    """
    if isinstance(data, (list, tuple)):
        data = data[0]
    array = np.asarray(data)
    spatial = array.ndim - 1 if rgb else array.ndim  # the viewer's axes: the colour axis is not one of them
    if spatial > 2:
        leading = spatial - 2
        steps = tuple(current_step)[-(leading + 2):-2] if len(current_step) >= spatial else (0,) * leading
        array = array[tuple(int(s) for s in steps)]
    if rgb and array.ndim == 3:
        colours = array[..., :3]
        array = np.moveaxis(colours, -1, 0) if keep_colour else colours.mean(axis=-1, dtype=np.float32)
    if array.ndim != (3 if rgb and keep_colour else 2):
        raise InputError(f"expected a 2-D image layer, got shape {np.shape(data)}")
    return array


def segment(image: np.ndarray, options: SegmentOptions = SegmentOptions(), *,
            on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Segment one 2-D image with the U-Net or the baseline.

    Parameters
    ----------
    image : (Y, X) or (3, Y, X) ndarray
        Grey, or red, green and blue planes (:func:`image_plane` with
        ``keep_colour``): averaged to grey unless the model reads colour.
    options : SegmentOptions, optional
    on_progress : callable, optional
        ``on_progress(done, total)``: network tiles for the U-Net, 0/1 then
        1/1 for the baseline.

    Returns
    -------
    labels : (Y, X) ndarray of uint16 or uint32
        0 background, 1..N objects.

    Raises
    ------
    SegtoolError
        For an unusable image or model file (``InputError``, ``ModelError``).
    """
    image = np.asarray(image)
    if options.method == "baseline":
        image = _grey(image)
        from segtool.baseline import segment_baseline

        if on_progress:
            on_progress(0, 1)
        kwargs = {} if options.min_size is None else {"min_size": options.min_size}
        result = segment_baseline(image, degree=options.degree, polarity=options.polarity,
                                  threshold=options.threshold, split=options.split, smooth=options.smooth,
                                  fill_holes=options.fill_holes, diameter="auto", **kwargs)
        if on_progress:
            on_progress(1, 1)
        return result.labels
    from segtool.baseline import empty_image_reason
    from segtool.pipeline.options import ObjectOptions, TileOptions
    from segtool.infer.network import load_for_inference_cached
    from segtool.infer.predict import predict_image
    from segtool.model.shipped import resolve_model

    # the model, device, precision and object size (estimated per image) as `segtool predict` picks them by
    # default, so both give the same labels
    path, _name = resolve_model(options.model)
    model = load_for_inference_cached(path, device="auto", precision=options.precision)
    if not model.config.reads_colour:
        image = _grey(image)  # a grey model reads colour files averaged, as segtool predict does
    labels = predict_image(image, model, tiling=TileOptions(tta=options.tta, scale=None),
                           objects=ObjectOptions(min_size=options.min_size), on_tile=on_progress).labels
    # segtool predict's empty-image rule: an empty well's uneven illumination is not an object
    if empty_image_reason(_grey(image)) is not None:
        labels = np.zeros_like(labels)
    return labels


def _grey(image: np.ndarray) -> np.ndarray:
    """A (3, Y, X) colour image averaged to (Y, X) float32; a 2-D image as it is."""
    return image.mean(axis=0, dtype=np.float32) if image.ndim == 3 else image


def check_model(options: SegmentOptions) -> None:
    """Refuse the model file a U-Net run would use, with the checks of ``segtool predict -m``, before it runs.

    Nothing to check for the baseline; a shipped model's name is checked as its file.

    Raises
    ------
    InputError
        Naming the file and the problem (missing, damaged, forged, or weights
        inconsistent with its config).
    """
    if options.method != "U-Net" or options.model is None:
        return
    from segtool.errors import ModelError, first_line
    from segtool.model.modelfile import check_model_file
    from segtool.model.shipped import resolve_model

    try:
        path = resolve_model(options.model)[0]
    except ModelError as err:
        raise InputError(str(err).splitlines()[0]) from None
    try:
        check_model_file(path)
    except ModelError as err:
        raise InputError(f"{options.model}: {first_line(err)}") from None
