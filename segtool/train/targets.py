"""What the network learns: targets derived from instance labels, and their losses.

Three target types (see :data:`segtool.model.config.TARGETS`):

``three_class``
    One class per pixel: 0 background, 1 object interior, 2 object boundary.
    Boundary pixels are object pixels with a 4-neighbour of a different label
    (background or another object), so two touching objects are always
    separated by boundary pixels and their interiors never touch. This is the
    U-Net baseline of the StarDist paper (Schmidt et al., MICCAI 2018).
    Loss: class-weighted cross-entropy plus soft Dice.
``distance``
    Two channels: foreground (0/1) and, inside each object, the Euclidean
    distance to the nearest pixel outside it divided by the object's largest
    distance, so 1 at the object's centre and small at its border.
    Loss: binary cross-entropy plus soft Dice on foreground, plus binary
    cross-entropy on the distance inside objects.
``three_class_distance``
    Both at once: the three classes and, as a fourth output, the normalised
    distance. The classes give the outline (as ``three_class``); the distance
    gives one seed per object and the line between touching objects, which a
    network learns directly instead of post-processing guessing it from the
    interior's shape. Loss: the ``three_class`` loss plus the distance term of
    ``distance``. Stored as two channels: class index, distance.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi

from segtool.labels import check_labels
from segtool.model.config import target_channels

__all__ = [
    "class_weights",
    "distance_target",
    "make_target",
    "target_loss",
    "three_class_target",
]


def three_class_target(labels: np.ndarray) -> np.ndarray:
    """Background (0), interior (1) and boundary (2) classes from instance labels.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Instance labels, 0 = background.

    Returns
    -------
    classes : (M, N) ndarray of uint8

    Notes
    -----
    A pixel is boundary if it belongs to an object and one of its four
    neighbours has another label. The image edge is not a boundary (an object
    cut by the edge continues outside it).

    Examples
    --------
    >>> lab = np.array([[1, 1, 1, 2, 2, 2]] * 3)
    >>> three_class_target(lab)
    array([[1, 1, 2, 2, 1, 1],
           [1, 1, 2, 2, 1, 1],
           [1, 1, 2, 2, 1, 1]], dtype=uint8)
    """
    labels = check_labels(labels, ndim=2)
    padded = np.pad(labels, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = (
        (padded[:-2, 1:-1] != centre)
        | (padded[2:, 1:-1] != centre)
        | (padded[1:-1, :-2] != centre)
        | (padded[1:-1, 2:] != centre)
    )
    foreground = labels > 0
    classes = foreground.astype(np.uint8)
    classes[foreground & differs] = 2
    return classes


def distance_target(labels: np.ndarray) -> np.ndarray:
    """Foreground and per-object normalised distance transform.

    Parameters
    ----------
    labels : (M, N) ndarray of int

    Returns
    -------
    target : (2, M, N) ndarray of float32
        Channel 0 is 1 on objects, 0 on background. Channel 1 is, for each
        object, the distance to the nearest pixel outside it (the image edge
        counts as outside) divided by that object's maximum: 1 at the centre,
        ``1/max`` on the border, 0 on background.

    Examples
    --------
    >>> lab = np.zeros((5, 5), int); lab[1:4, 1:4] = 1
    >>> distance_target(lab)[1, 2]
    array([0. , 0.5, 1. , 0.5, 0. ], dtype=float32)
    """
    labels = check_labels(labels, ndim=2)
    out = np.zeros((2,) + labels.shape, dtype=np.float32)
    out[0] = labels > 0
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        mask = np.pad(labels[box] == index, 1)
        dist = ndi.distance_transform_edt(mask)[1:-1, 1:-1]
        peak = dist.max()
        if peak > 0:
            inside = mask[1:-1, 1:-1]
            out[1][box][inside] = (dist[inside] / peak).astype(np.float32)
    return out


def make_target(labels: np.ndarray, target: str) -> np.ndarray:
    """Build the training target of type ``target`` as a (K, M, N) float32 array.

    ``three_class`` gives one channel holding the class index (0, 1, 2);
    ``distance`` gives the two channels of :func:`distance_target`;
    ``three_class_distance`` gives the class index and the normalised distance.

    Examples
    --------
    >>> make_target(np.ones((2, 3), int), "three_class").shape
    (1, 2, 3)
    """
    target_channels(target)
    if target == "three_class":
        return three_class_target(labels)[None].astype(np.float32)
    if target == "three_class_distance":
        return np.stack([three_class_target(labels).astype(np.float32), distance_target(labels)[1]])
    return distance_target(labels)


def class_weights(class_maps: list[np.ndarray], *, n_classes: int = 3) -> np.ndarray:
    """Cross-entropy weights from class frequencies (square root of median-frequency balancing).

    ``w_c = sqrt(median(f) / f_c)``, normalised so that the pixel-weighted
    mean weight is 1. The square root keeps rare boundary pixels important
    without letting them dominate (full balancing over-segments background).

    Parameters
    ----------
    class_maps : list of ndarray of int
        Per-image class index maps.

    Returns
    -------
    weights : (n_classes,) ndarray of float32

    Examples
    --------
    >>> w = class_weights([np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])])
    >>> bool(w[2] > w[1] > w[0])
    True
    """
    counts = np.zeros(n_classes, dtype=np.float64)
    for classes in class_maps:
        counts += np.bincount(np.asarray(classes, dtype=np.int64).ravel(), minlength=n_classes)[:n_classes]
    freq = counts / max(counts.sum(), 1.0)
    freq = np.where(freq > 0, freq, np.nan)
    if np.all(np.isnan(freq)):
        return np.ones(n_classes, dtype=np.float32)
    weights = np.sqrt(np.nanmedian(freq) / freq)
    weights = np.where(np.isnan(weights), 1.0, weights)
    present = np.nan_to_num(freq)
    weights /= float((weights * present).sum()) or 1.0
    return weights.astype(np.float32)


def _soft_dice(probs: torch.Tensor, onehot: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean Dice over channels, summing over batch and pixels."""
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def target_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    kind: str,
    *,
    weights: torch.Tensor | None = None,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """Loss between network logits and a batch of targets from :func:`make_target`.

    Parameters
    ----------
    logits : (B, C, H, W) Tensor
    target : (B, K, H, W) Tensor
        ``three_class``: K = 1 holding class indices; ``distance``: K = 2
        (foreground, distance); ``three_class_distance``: K = 2 (class index,
        distance).
    kind : str
        Target type.
    weights : (3,) Tensor, optional
        Cross-entropy class weights (the three-class part only).
    dice_weight : float, optional
        Weight of the soft Dice term.

    Returns
    -------
    loss : scalar Tensor

    Examples
    --------
    >>> t = torch.zeros(1, 1, 4, 4)
    >>> round(float(target_loss(torch.zeros(1, 3, 4, 4), t, "three_class", dice_weight=0)), 4)
    1.0986
    """
    target_channels(kind)
    if kind == "three_class":
        return _three_class_loss(logits, target[:, 0], weights, dice_weight)
    if kind == "three_class_distance":
        classes = target[:, 0]
        inside = (classes > 0).to(logits.dtype)[:, None]
        loss = _three_class_loss(logits[:, :3], classes, weights, dice_weight)
        return loss + _distance_loss(logits[:, 3:4], target[:, 1:2], inside)
    fg, dist = target[:, 0:1], target[:, 1:2]
    bce_fg = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0:1], fg)
    loss = bce_fg + _distance_loss(logits[:, 1:2], dist, fg)
    if dice_weight:
        loss = loss + dice_weight * _soft_dice(torch.sigmoid(logits[:, 0:1]), fg)
    return loss


def _three_class_loss(
    logits: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor | None, dice_weight: float
) -> torch.Tensor:
    """Cross-entropy plus soft Dice over background / interior / boundary."""
    classes = classes.long()
    ce = torch.nn.functional.cross_entropy(logits, classes, weight=weights)
    if not dice_weight:
        return ce
    probs = torch.softmax(logits, dim=1)
    onehot = torch.nn.functional.one_hot(classes, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    return ce + dice_weight * _soft_dice(probs, onehot)


def _distance_loss(logits: torch.Tensor, distance: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the normalised distance, averaged over object pixels only.

    Background pixels are left out: there the distance is 0 by definition and
    the foreground output already says so.
    """
    per_pixel = torch.nn.functional.binary_cross_entropy_with_logits(logits, distance, reduction="none")
    return (per_pixel * inside).sum() / inside.sum().clamp_min(1.0)
