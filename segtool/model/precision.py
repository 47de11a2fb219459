"""Numeric precision of the network's arithmetic: float32, or bfloat16 autocast.

bfloat16 keeps float32's exponent range with an 8-bit mantissa, so a U-Net
trains in it without loss scaling; convolutions run at about twice the speed
on CPUs with native bfloat16 instructions (AVX512-BF16, AMX) and on recent
GPUs. Parameters, optimiser state, BatchNorm and the loss stay in float32
(:func:`torch.autocast` picks the precision per operation), so only the
convolution and matrix arithmetic is rounded. On CPUs without those
instructions bfloat16 is emulated and slower than float32, so ``auto`` uses
it only where the hardware has it.
"""

from __future__ import annotations

import contextlib

import torch

from segtool.errors import InputError

__all__ = ["PRECISIONS", "autocast", "bf16_supported", "resolve_precision"]

#: Precision names accepted by :func:`resolve_precision` (``auto`` resolves to one of the others).
PRECISIONS = ("auto", "fp32", "bf16")


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 convolutions natively (not emulated).

    Examples
    --------
    >>> isinstance(bf16_supported(torch.device("cpu")), bool)
    True
    """
    if device.type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        try:
            return bool(check()) if check is not None else False
        except RuntimeError:
            return False
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """Turn ``auto``, ``fp32`` or ``bf16`` into the precision to use on ``device``.

    ``auto`` is ``bf16`` where :func:`bf16_supported` says so, else ``fp32``.
    An explicit ``bf16`` is honoured even where it is emulated (slow but
    correct); on Apple MPS it is refused.

    Raises
    ------
    InputError
        Unknown name, or ``bf16`` on a device without bfloat16 autocast.

    Examples
    --------
    >>> resolve_precision("fp32", torch.device("cpu"))
    'fp32'
    """
    name = str(name).lower()
    if name not in PRECISIONS:
        raise InputError(f"unknown precision {name!r}; choose {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if name == "bf16" and device.type not in ("cpu", "cuda"):
        raise InputError(f"precision bf16 is not available on device {device.type!r}; use fp32")
    return name


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which the network's forward pass runs at ``precision``.

    ``fp32`` is a no-op context, so callers need no branch.
    """
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
