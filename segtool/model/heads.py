"""Turn network logits into the maps that tiles are blended on."""

from __future__ import annotations

import torch

from segtool.errors import InputError
from segtool.model.config import target_channels

__all__ = ["activate"]


def activate(logits: torch.Tensor, target: str) -> torch.Tensor:
    """Apply the output activation that matches the target type.

    Parameters
    ----------
    logits : (N, C, H, W) or (C, H, W) Tensor
        Raw network output; the channel axis is third from last.
    target : str
        ``"three_class"``: softmax over channels (0 background, 1 interior,
        2 boundary). ``"distance"``: sigmoid of each channel (0 foreground
        probability, 1 normalised distance in [0, 1], 1 at object centres).
        ``"three_class_distance"``: softmax over channels 0-2 (as
        ``three_class``) and sigmoid of channel 3 (the distance).

    Returns
    -------
    maps : Tensor
        Same shape as ``logits``, float, values in [0, 1].

    Raises
    ------
    InputError
        If ``target`` is unknown or the channel count does not match it.

    Examples
    --------
    >>> maps = activate(torch.zeros(3, 2, 2), "three_class")
    >>> round(float(maps[:, 0, 0].sum()), 6)
    1.0
    >>> float(activate(torch.zeros(2, 1, 1), "distance").max())
    0.5
    """
    channels = target_channels(target)
    if logits.ndim < 3 or logits.shape[-3] != channels:
        raise InputError(
            f"target {target!r} needs {channels} channels on axis -3, got shape {tuple(logits.shape)}"
        )
    if target == "three_class":
        return torch.softmax(logits, dim=-3)
    if target == "three_class_distance":
        classes, distance = logits.split([3, 1], dim=-3)
        return torch.cat([torch.softmax(classes, dim=-3), torch.sigmoid(distance)], dim=-3)
    return torch.sigmoid(logits)
