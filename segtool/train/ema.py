"""An exponential moving average of a network's weights.

Averaging the weights over the last steps of training (Polyak averaging)
gives a model that sits nearer the middle of the region the optimiser
wanders in than the weights of any one step, at the cost of one extra copy
of the weights and an in-place update per step.
"""

from __future__ import annotations

import torch

__all__ = ["average_decay", "update_average"]


def average_decay(decay: float, step: int) -> float:
    """The decay used at optimiser step ``step`` (1-based): ramped up early on.

    A fixed decay of 0.999 would keep the random initial weights in the
    average for thousands of steps; ``(1 + step) / (10 + step)`` caps it
    while few steps have been taken, so the average follows training from
    the start.

    Examples
    --------
    >>> round(average_decay(0.999, 1), 3), average_decay(0.999, 100_000)
    (0.182, 0.999)
    """
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_average(average: torch.nn.Module, net: torch.nn.Module, *, decay: float, step: int) -> None:
    """Move ``average``'s weights towards ``net``'s: ``a <- d * a + (1 - d) * w``.

    Parameters
    ----------
    average, net : torch.nn.Module
        The same architecture. Floating-point buffers (BatchNorm running
        statistics) are averaged like the parameters; integer buffers (the
        BatchNorm batch counter) are copied.
    decay : float
        Target decay in [0, 1); see :func:`average_decay` for the ramp.
    step : int
        Optimiser steps taken so far (1-based).
    """
    d = average_decay(decay, step)
    mine = average.state_dict()
    for name, value in net.state_dict().items():
        target = mine[name]
        if value.is_floating_point():
            target.lerp_(value, 1.0 - d)
        else:
            target.copy_(value)
