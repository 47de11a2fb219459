"""Check a model file against itself before any network is built from it.

Model files travel (forums, shared drives, bioimage.io zips), so a file is
checked before segtool allocates anything it describes:

- **Layout** (:func:`check_torch_archive`, before ``torch.load``): a ``.pt`` is
  the zip that ``torch.save`` writes, its entries stored uncompressed (so none
  can expand past the file's own size), none running past the end of the file,
  no absolute or ``..`` entry name, and its pickle (the config and metadata
  text plus one record per tensor) at most :data:`MAX_PICKLE_BYTES`.
- **Size** (:func:`check_network_size`): the config describes at most
  :data:`MAX_PARAMETERS` parameters; a package's weights entry may not
  decompress past what its config needs (:func:`weights_entry_limit`).
- **Consistency** (:func:`check_state_dict`): the state dict holds exactly the
  tensor names and shapes that the config implies (derived by building the
  network on PyTorch's ``meta`` device, which allocates no memory), plain dense
  tensors of the right kind, every weight finite, every BatchNorm variance
  non-negative. A network is then only ever as large as the weights present.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from segtool.errors import ModelError
from segtool.model.config import TARGETS, UNetConfig
from segtool.model.model import UNet

__all__ = [
    "MAX_PARAMETERS",
    "MAX_PICKLE_BYTES",
    "MAX_TEXT_BYTES",
    "check_network_size",
    "check_state_dict",
    "check_torch_archive",
    "check_zip_names",
    "config_shapes",
    "describe_weights",
    "read_entry",
    "weights_entry_limit",
]

#: The largest network segtool loads: 2**30 parameters (4 GiB in float32). segtool's largest
#: trainable configurations are far below it (depth 6 with 64 base channels: 4.6e8).
MAX_PARAMETERS = 2**30
#: A torch file's pickle holds the config and metadata JSON and ~100 bytes per tensor (the shipped models': 42 KB).
MAX_PICKLE_BYTES = 16 * 2**20
#: ``segtool_model.json`` and ``rdf.yaml`` of a package (the shipped model's: a few KB).
MAX_TEXT_BYTES = 4 * 2**20
# Weights as segtool (float32), the shipped files (float16) or another tool (bfloat16, float64) store them.
_WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_COUNTER_DTYPES = (torch.int64, torch.int32)
# Room for a weights file's pickle and zip records beside its tensors.
_WEIGHTS_OVERHEAD = 2**20


def config_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """The state dict names and shapes of the network ``config`` describes, without allocating it.

    Examples
    --------
    >>> shapes = config_shapes(UNetConfig(depth=2, base_channels=4))
    >>> shapes["encoders.0.0.weight"], shapes["head.weight"], len(shapes)
    ((4, 1, 3, 3), (3, 4, 1, 1), 66)
    """
    with torch.device("meta"):
        net = UNet(config)
    return {name: tuple(t.shape) for name, t in net.state_dict().items()}


def _parameters(shapes: dict[str, tuple[int, ...]]) -> int:
    total = 0
    for name, shape in shapes.items():
        if not name.endswith("num_batches_tracked"):
            count = 1
            for n in shape:
                count *= n
            total += count
    return total


def check_network_size(config: UNetConfig) -> int:
    """The number of values in the state dict ``config`` implies; refuse a network over :data:`MAX_PARAMETERS`.

    Raises
    ------
    ModelError
        If the config describes a larger network.

    Examples
    --------
    >>> config = UNetConfig(depth=2, base_channels=4)
    >>> state = UNet(config).state_dict()
    >>> check_network_size(config) == sum(t.numel() for n, t in state.items() if not n.endswith("num_batches_tracked"))
    True
    """
    return _check_size(config, _parameters(config_shapes(config)))


def _check_size(config: UNetConfig, count: int) -> int:
    if count > MAX_PARAMETERS:
        raise ModelError(
            f"model file's config describes a network of {count:,} parameters (depth {config.depth}, "
            f"{config.base_channels} base channels), more than segtool loads ({MAX_PARAMETERS:,})"
        )
    return count


def weights_entry_limit(config: dict[str, Any]) -> int:
    """The most bytes a package's weights entry may decompress to: twice its config's float32 weights, plus 1 MiB.

    Twice leaves room for float64 weights; the config is checked first, so a
    config of a huge network is refused before any weights are read.

    Raises
    ------
    ModelError
        If the config is invalid or describes more than :data:`MAX_PARAMETERS`.

    Examples
    --------
    >>> values = check_network_size(UNetConfig(depth=2, base_channels=4))
    >>> weights_entry_limit({"depth": 2, "base_channels": 4}) == 8 * values + 2**20
    True
    """
    try:
        parsed = UNetConfig.from_dict(config)
    except (ValueError, TypeError) as err:  # InputError is a ValueError
        raise ModelError(f"model file has an invalid config: {err}") from None
    return 8 * check_network_size(parsed) + _WEIGHTS_OVERHEAD


def _unsafe_name(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":")


def read_entry(archive: zipfile.ZipFile, name: str, limit: int, what: str) -> bytes:
    """The bytes of one zip entry, refused before reading when it would decompress past ``limit``.

    The declared size is checked first, and at most ``limit + 1`` bytes are
    ever decompressed, whatever the zip's directory claims.

    Raises
    ------
    ModelError
        If the entry is, or turns out to be, larger than ``limit``.
    """
    info = archive.getinfo(name)
    too_big = ModelError(f"{what} entry {name} would decompress past {limit:,} bytes; refused before reading it")
    if info.file_size > limit:
        raise too_big
    with archive.open(info) as entry:
        data = entry.read(limit + 1)
    if len(data) > limit:
        raise too_big
    return data


def check_zip_names(archive: zipfile.ZipFile, what: str) -> None:
    """Refuse a zip holding an absolute or ``..`` entry name (nothing is extracted, but such a file is forged)."""
    for name in archive.namelist():
        if _unsafe_name(name):
            raise ModelError(f"{what} holds an unsafe entry name {name[:80]!r} (absolute or with '..'); refused")


def check_torch_archive(source: Path | bytes, what: str = "model file") -> None:
    """Refuse a torch file whose layout would let ``torch.load`` read more than the file holds.

    Parameters
    ----------
    source : Path or bytes
        A ``.pt`` file, or the bytes of one (a package's ``weights.pt``).
    what : str
        How messages name it.

    Raises
    ------
    ModelError
        If it is not the zip layout ``torch.save`` writes (a bare pickle,
        truncated, random bytes), holds a compressed entry, an entry past the
        end of the file, an unsafe entry name, or a pickle over
        :data:`MAX_PICKLE_BYTES`.
    """
    size = len(source) if isinstance(source, bytes) else source.stat().st_size
    if size == 0:
        raise ModelError(f"not a readable segtool {what}: the file is empty (0 bytes)")
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
            infos = archive.infolist()
            check_zip_names(archive, what)
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001  BadZipFile, struct errors, truncation: all mean "not torch's zip"
        raise ModelError(
            f"not a readable segtool {what} (not the zip layout torch.save writes: {str(err)[:80] or 'damaged'}); "
            "truncated, damaged, or an old-style pickle, which segtool does not read"
        ) from None
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ModelError(f"{what} is forged or damaged: entry {info.filename[:80]} is compressed, "
                             "which torch.save never does")
        if info.header_offset + info.file_size > size or info.compress_size != info.file_size:
            raise ModelError(f"{what} is truncated or forged: entry {info.filename[:80]} runs past the end of the file")
        if PurePosixPath(info.filename).name == "data.pkl" and info.file_size > MAX_PICKLE_BYTES:
            raise ModelError(
                f"{what} has a {info.file_size / 2**20:.0f} MiB header (its pickle), over the "
                f"{MAX_PICKLE_BYTES // 2**20} MiB a model's config and metadata need; refused before reading it"
            )


def _architecture(depth: Any, base: Any, inputs: Any, outputs: Any, target: str | None = None) -> str:
    named = f" ({target})" if target else ""
    return f"depth {depth}, {base} base channels, {inputs} input channel(s), {outputs} outputs{named}"


def describe_weights(state: dict[str, Any]) -> str:
    """The architecture a state dict holds, read from its tensor names and shapes (for messages).

    Examples
    --------
    >>> with torch.device("meta"):
    ...     net = UNet(UNetConfig(depth=3, base_channels=8, in_channels=3, channels="rgb"))
    >>> describe_weights(net.state_dict())
    'depth 3, 8 base channels, 3 input channel(s), 3 outputs (three_class)'
    """
    first, head = state.get("encoders.0.0.weight"), state.get("head.weight")
    if not isinstance(first, torch.Tensor) or not isinstance(head, torch.Tensor) or first.ndim != 4 or head.ndim != 4:
        names = ", ".join(repr(str(n)[:40]) for n in list(state)[:2])
        return f"{len(state)} tensors that are not a segtool U-Net's ({names}{', ...' if len(state) > 2 else ''})"
    levels = {str(n).split(".")[1] for n in state if str(n).startswith("encoders.")}
    outputs = int(head.shape[0])
    target = next((name for name, count in TARGETS.items() if count == outputs), None)
    return _architecture(len(levels) - 1, int(first.shape[0]), int(first.shape[1]), outputs, target)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def _bfloat16_as_float32(tensor: torch.Tensor) -> np.ndarray:
    """NumPy has no bfloat16; its values are the float32 whose upper 16 bits they are."""
    bits = tensor.contiguous().view(torch.int16).numpy().view(np.uint16).astype(np.uint32)
    return (bits << 16).view(np.float32)


def check_state_dict(config: UNetConfig, state: Any) -> None:
    """Refuse weights that are not exactly those ``config`` implies, or not finite.

    Parameters
    ----------
    config : UNetConfig
        The model file's own config.
    state : dict of str to Tensor
        Its state dict, as ``torch.load`` read it.

    Raises
    ------
    ModelError
        ``model file is inconsistent: config says ..., weights hold ...``
        when names or shapes differ; naming the tensor when one is not a
        plain dense tensor of the right kind, holds NaN or infinity, or is a
        negative BatchNorm variance; when the network is over
        :data:`MAX_PARAMETERS`.

    Examples
    --------
    >>> config = UNetConfig(depth=2, base_channels=4)
    >>> check_state_dict(config, UNet(config).state_dict())
    >>> try:
    ...     check_state_dict(UNetConfig(depth=3, base_channels=4), UNet(config).state_dict())
    ... except ModelError as err:
    ...     print(*str(err).split(", weights hold "), sep="\\n")
    model file is inconsistent: config says depth 3, 4 base channels, 1 input channel(s), 3 outputs (three_class)
    depth 2, 4 base channels, 1 input channel(s), 3 outputs (three_class)
    """
    if not isinstance(state, dict):
        raise ModelError("model file is damaged: its weights are not a state dict")
    expected = config_shapes(config)
    says = _architecture(config.depth, config.base_channels, config.in_channels, config.out_channels, config.target)
    holds = describe_weights(state)
    if says != holds:
        raise ModelError(f"model file is inconsistent: config says {says}, weights hold {holds}")
    missing = [name for name in expected if name not in state]
    extra = [str(name) for name in state if name not in expected]
    if missing or extra:
        first = f"lack {missing[0]}" if missing else f"hold an extra tensor {extra[0][:80]!r}"
        raise ModelError(f"model file is inconsistent: config says {len(expected)} tensors for {says}; "
                         f"weights hold {len(state)} and {first}")
    for name, shape in expected.items():
        tensor = state[name]
        if (not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided or tensor.is_quantized
                or tensor.device.type != "cpu"):  # torch.load mapped real storages to the CPU: "meta" holds no data
            raise ModelError(f"model file is damaged: {name} is not a plain dense tensor with data")
        if tuple(tensor.shape) != shape:
            raise ModelError(f"model file is inconsistent: config says {name} is {_shape(shape)}, "
                             f"weights hold {_shape(tuple(tensor.shape))}")
        allowed = _COUNTER_DTYPES if name.endswith("num_batches_tracked") else _WEIGHT_DTYPES
        if tensor.dtype not in allowed:
            raise ModelError(f"model file is damaged: {name} has dtype {str(tensor.dtype).replace('torch.', '')}")
    _check_size(config, _parameters(expected))
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        # NumPy: one pass, no thread pool to wake for each of ~100 small tensors
        values = tensor.numpy() if tensor.dtype != torch.bfloat16 else _bfloat16_as_float32(tensor)
        finite = bool(np.isfinite(values).all())
        if not finite:
            raise ModelError(f"model file holds non-finite weights (NaN or infinity) in {name}; refused")
        if name.endswith("running_var") and (values < 0).any():
            raise ModelError(f"model file is damaged: {name} holds negative variances")
