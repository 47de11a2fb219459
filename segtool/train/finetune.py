"""Start a training run from an existing model (``segtool train --init``).

The new network takes the parent's architecture, normalisation, target and
tuned post-processing, and starts from its weights. Only the number of input
channels may differ: the first convolution is then adapted (see
:func:`adapt_input_weights`). The parent is recorded (name, file hash,
segtool version, and its own parents) so ``model info`` can show the lineage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from segtool.errors import ModelError
from segtool.model.config import CHANNEL_MODES, UNetConfig

__all__ = ["FIRST_CONV", "InitModel", "adapt_input_weights", "child_config", "load_init", "parent_record"]

#: State-dict key of the first convolution, the only weight whose shape depends on the input channels.
FIRST_CONV = "encoders.0.0.weight"


def adapt_input_weights(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a first-convolution weight to another number of input channels.

    From 1 channel to C: the grey kernel is spread over the C channels, each
    getting ``1/C`` of it, so an image whose C channels are equal gives
    exactly the parent's response to that grey image (the mean of the
    channels is what the parent was trained on: segtool averages RGB to
    grey). From C channels to 1: the kernels are summed over channels, the
    same identity read backwards. Other pairs have no such identity and are
    refused.

    Parameters
    ----------
    weight : (out, in, kh, kw) Tensor
    in_channels : int
        Input channels of the new network.

    Returns
    -------
    weight : (out, in_channels, kh, kw) Tensor
        A new tensor (the input is not modified).

    Raises
    ------
    ModelError
        If neither the old nor the new channel count is 1.

    Examples
    --------
    >>> w = torch.ones(2, 1, 3, 3)
    >>> adapt_input_weights(w, 3).shape, float(adapt_input_weights(w, 3).sum())
    (torch.Size([2, 3, 3, 3]), 18.0)
    """
    have = int(weight.shape[1])
    if have == in_channels:
        return weight.clone()
    if have == 1:
        return weight.repeat(1, in_channels, 1, 1) / in_channels
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    raise ModelError(
        f"cannot adapt a {have}-channel model to {in_channels} input channels "
        "(only 1 -> N and N -> 1 are defined); train from scratch instead"
    )


def child_config(parent: UNetConfig, *, channels: str | None = None, input_transform: str | None = None) -> UNetConfig:
    """The config of a network fine-tuned from ``parent``.

    Everything is the parent's (architecture, normalisation, target, patch
    size, tuned post-processing as the starting point), except the input
    ``channels`` mode (``"grey"`` or ``"rgb"``) when given, which sets
    ``in_channels`` to match, and the ``input_transform`` when given (see
    :mod:`segtool.intake`): the child keeps the transform chosen for
    it, which is what its weights will learn to read.

    Raises
    ------
    InputError
        If the channels and the transform do not go together.

    Examples
    --------
    >>> child_config(UNetConfig(depth=2), channels="rgb").in_channels
    3
    >>> child_config(UNetConfig(depth=2), input_transform="hematoxylin").input
    'hematoxylin'
    """
    changes: dict[str, Any] = {}
    if channels is not None and channels != parent.channels:
        changes.update(channels=channels, in_channels=CHANNEL_MODES[channels])
    if input_transform is not None:
        changes["input"] = input_transform
    return replace(parent, **changes)


def parent_record(path: Path, *, name: str | None, metadata: dict[str, Any]) -> dict[str, Any]:
    """What a fine-tuned model stores about its parent.

    Parameters
    ----------
    path : Path
        The parent's model file.
    name : str or None
        The shipped model's name, if the parent is one.
    metadata : dict
        The parent's metadata (its own ``parent`` entry is kept, so the
        whole lineage travels along).

    Returns
    -------
    record : dict, JSON-safe
        ``name`` (shipped name or file name), ``file``, ``sha256`` of the
        file, ``segtool_version`` and ``created`` of the parent, and
        ``parent`` (the parent's parent, or None).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {
        "name": name or path.name,
        "file": path.name,
        "sha256": digest.hexdigest(),
        "segtool_version": metadata.get("segtool_version"),
        "created": metadata.get("created"),
        "parent": metadata.get("parent"),
    }


@dataclass(frozen=True)
class InitModel:
    """A parent model read for ``--init``: its config, weights and record.

    Attributes
    ----------
    config : UNetConfig
        The parent's config.
    state_dict : dict of Tensor
        The parent's weights, in float32.
    record : dict
        :func:`parent_record` of the parent.
    """

    config: UNetConfig
    state_dict: dict[str, torch.Tensor]
    record: dict[str, Any]

    def weights_for(self, config: UNetConfig) -> dict[str, torch.Tensor]:
        """The parent's weights for a network built from ``config`` (first conv adapted)."""
        weights = dict(self.state_dict)
        weights[FIRST_CONV] = adapt_input_weights(weights[FIRST_CONV], config.in_channels)
        return weights


def load_init(spec: str | Path) -> InitModel:
    """Read the model that ``--init`` names.

    Parameters
    ----------
    spec : str or Path
        A model file or a shipped model's name.

    Returns
    -------
    InitModel

    Raises
    ------
    ModelError
        Unknown name, missing or unreadable file, weights that do not fit
        the file's own config.
    """
    from segtool.model.modelfile import load_model
    from segtool.model.shipped import resolve_model

    path, name = resolve_model(spec)
    loaded = load_model(path, device="cpu")
    # shipped files may hold float16 weights: training starts from float32 copies
    state = {k: v.detach().float() if v.is_floating_point() else v.detach().clone() for k, v in loaded.net.state_dict().items()}
    if FIRST_CONV not in state:
        raise ModelError(f"{path}: no first convolution ({FIRST_CONV}) in the model's weights")
    return InitModel(loaded.config, state, parent_record(path, name=name, metadata=loaded.metadata))
