"""Input transforms: what a model does to an image before percentile normalisation.

A model stores its transform (``UNetConfig.input``), and training, validation
and prediction apply it the same way, so a model made with
``segtool train --input hematoxylin`` is used with it without the user
retyping anything.

The transforms exist because a model trained on one contrast fails on the
reverse: the fluorescence model expects bright nuclei on a dark background,
while stained tissue and brightfield show dark nuclei on a bright one.
Turning those into a "bright nuclei" image first lets the fluorescence model
(and a model fine-tuned from it) see what it knows (MODELS.md, ``nuclei-he``).

- ``intensity``: the pixel values as read (segtool's default).
- ``inverted``: the values negated, so dark objects become bright. Percentile
  normalisation follows, so ``-x`` and ``max - x`` give the same network input.
- ``hematoxylin``: the hematoxylin optical density of an RGB image (colour
  deconvolution with the stain vectors of Ruifrok and Johnston, Anal. Quant.
  Cytol. Histol. 23:291-299, 2001). Grey images are taken as R = G = B, where
  it reduces to a scaled optical density ``-log10(I / I0)``.
"""

from __future__ import annotations

import numpy as np

from segtool.errors import InputError

__all__ = [
    "INPUT_TRANSFORMS", "STAIN_RGB", "apply_input_transform", "hematoxylin_density", "reads_colour", "samples_last_to_input",
]

#: The transforms a model can store, with a one-line description (``model info``, ``--help``).
INPUT_TRANSFORMS: dict[str, str] = {
    "intensity": "pixel values as read",
    "inverted": "values negated (dark objects become bright)",
    "hematoxylin": "hematoxylin optical density of the RGB image (grey read as R = G = B)",
}

#: Optical density of one unit of hematoxylin, eosin and DAB in R, G, B (rows), from Ruifrok and Johnston (2001).
STAIN_RGB = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def reads_colour(input_transform: str) -> bool:
    """Whether a transform needs the file's R, G and B channels rather than their grey average.

    Examples
    --------
    >>> reads_colour("hematoxylin"), reads_colour("inverted")
    (True, False)
    """
    return input_transform == "hematoxylin"


def _white_level(image: np.ndarray) -> float:
    """The intensity of unstained, fully lit pixels: the type's maximum, or for floats 1 (or the image maximum)."""
    if image.dtype == bool:
        return 1.0
    if np.issubdtype(image.dtype, np.integer):
        return float(np.iinfo(image.dtype).max)
    peak = float(np.nanmax(image)) if image.size else 1.0
    return peak if peak > 1.0 else 1.0


def hematoxylin_density(image: np.ndarray) -> np.ndarray:
    """The hematoxylin amount of each pixel of a brightfield RGB (or grey) image.

    Parameters
    ----------
    image : (3, H, W), (4, H, W), (1, H, W) or (H, W) ndarray
        Channels first (as :func:`segtool.io.read_image` reads colour); a
        fourth (alpha) channel is ignored; a grey image counts as R = G = B.
        Integers are scaled by their type's maximum; floats by 1, or by the
        image's maximum when that is above 1.

    Returns
    -------
    density : (H, W) ndarray of float32
        Hematoxylin optical density (base 10), 0 where there is none
        (negative amounts, which no stain makes, are cut to 0).

    Raises
    ------
    InputError
        If the image is not 2-D, grey or 3/4-channel.

    Examples
    --------
    >>> white = np.full((3, 1, 1), 255, np.uint8)
    >>> float(hematoxylin_density(white)[0, 0])
    0.0
    """
    data = np.asarray(image)
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.ndim != 3 or data.shape[0] not in (1, 3, 4):
        raise InputError(
            f"the hematoxylin input needs an RGB or grey image, got shape {np.shape(image)}"
        )
    rgb = data[:3].astype(np.float64) if data.shape[0] != 1 else np.repeat(data.astype(np.float64), 3, axis=0)
    # the darkest transmission we trust: one grey level of 8-bit data (log of 0 is infinite)
    transmission = np.clip(rgb / _white_level(data), 1.0 / 256, 1.0)
    density = -np.log10(transmission)  # (3, H, W)
    # pixel OD = amounts @ STAIN_RGB, so amounts = OD @ inverse(STAIN_RGB); the first column gives hematoxylin
    hematoxylin = np.tensordot(np.linalg.inv(STAIN_RGB)[:, 0], density, axes=(0, 0))
    return np.maximum(hematoxylin, 0.0).astype(np.float32)


def apply_input_transform(image: np.ndarray, input_transform: str) -> np.ndarray:
    """Apply a model's input transform to an image, before percentile normalisation.

    Parameters
    ----------
    image : (H, W) or (C, H, W) ndarray
        As read (channels first); not modified.
    input_transform : {"intensity", "inverted", "hematoxylin"}
        See the module docstring.

    Returns
    -------
    image : ndarray
        ``intensity``: the input itself; ``inverted``: float32 of the same
        shape; ``hematoxylin``: (H, W) float32.

    Raises
    ------
    InputError
        Unknown transform, or an image the transform cannot use.

    Examples
    --------
    >>> apply_input_transform(np.array([[0, 5]], np.uint8), "inverted").tolist()
    [[-0.0, -5.0]]
    """
    if input_transform == "intensity":
        return image
    if input_transform == "inverted":
        return -np.asarray(image, dtype=np.float32)
    if input_transform == "hematoxylin":
        return hematoxylin_density(image)
    raise InputError(f"unknown input transform {input_transform!r}; choose one of {', '.join(INPUT_TRANSFORMS)}")


def samples_last_to_input(pixels: np.ndarray, input_transform: str) -> np.ndarray:
    """A model's (H, W) input from pixels stored samples last, as file readers get them.

    The readers that stream an image in pieces (row bands, Dask blocks) see
    each piece as the file stores it, channels last. This applies the rule of
    :func:`segtool.io.read_image` to a piece: ``hematoxylin`` reads R, G and B
    (a grey image as R = G = B); any other transform sees the float32 mean of
    the first three samples, or the single sample. Every step is pixel by
    pixel, so the pieces make up what the whole image gives.

    Parameters
    ----------
    pixels : (H, W) or (H, W, S) ndarray
        One sample (grey, or a channel the caller already picked) or S
        samples per pixel (RGB or RGBA).
    input_transform : {"intensity", "inverted", "hematoxylin"}
        The model's transform.

    Returns
    -------
    image : (H, W) ndarray
        ``pixels`` itself for grey ``intensity`` input, otherwise float32.

    Examples
    --------
    >>> rgb = np.array([[[30, 60, 90]]], np.uint8)
    >>> samples_last_to_input(rgb, "intensity").tolist(), samples_last_to_input(rgb, "inverted").tolist()
    ([[60.0]], [[-60.0]])
    """
    data = np.asarray(pixels)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if input_transform == "hematoxylin":
        return hematoxylin_density(np.moveaxis(data, -1, 0) if data.ndim == 3 else data)
    if data.ndim == 3:
        data = data[..., :3].astype(np.float32).mean(axis=-1)
    return apply_input_transform(data, input_transform)
