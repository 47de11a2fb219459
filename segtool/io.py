"""Reading and writing whole 2-D images and label images.

One of the modules that touch disk: the others are :mod:`segtool.export`, the
model-file code, the lazy readers and writers of large images (bands, Dask
blocks), the Z-stack readers and writers, and the training and report writers
(ARCHITECTURE.md names them).

Reading returns a 2-D (Y, X) array plus the calibration found in the file;
stacks and multi-channel images are reduced to one plane on request and refused
with a message naming the axis otherwise. Every write is atomic: data goes to a
hidden temporary file in the destination folder, which is renamed over the
destination only once complete, so an interrupted run never leaves a truncated
file that looks finished.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segtool.calibration import tiff_calibration
from segtool.errors import InputError, OutputError, OutputExistsError, first_line
from segtool.labels import to_label_dtype
from segtool.memory import MemoryBudget, check_memory
from segtool.publish import publish_new
from segtool.quiet import collect_records

__all__ = [
    "IMAGE_SUFFIXES",
    "ZARR_MARKERS",
    "is_zarr_store",
    "MAX_IMAGE_BYTES",
    "Image",
    "read_image",
    "read_labels",
    "write_labels",
    "write_float",
    "write_png",
    "atomic_output",
    "staged_output",
    "check_output_free",
    "PLANE_AXES",
    "check_readable_file",
    "reduce_to_2d",
    "write_tiff",
]

#: File name endings read as images (lower case).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

#: Largest decoded image segtool will allocate; a header claiming more is refused
#: before any memory is reserved (a corrupt or hostile file must not exhaust RAM).
MAX_IMAGE_BYTES = 16 * 2**30

# Axis letters tifffile uses for planes of a stack (as opposed to channels).
PLANE_AXES = "ZTQIRLHEVAP"
_CHANNEL_AXES = "CS"


@dataclass(frozen=True)
class Image:
    """A 2-D image and the calibration read with it.

    Attributes
    ----------
    data : (M, N) ndarray
        Pixel values in the file's own dtype.
    path : Path
        Where it was read from.
    pixel_size : tuple of float or None
        Physical (y, x) size of one pixel, or None when the file has no
        calibration.
    unit : str or None
        Unit of ``pixel_size`` (e.g. ``"micron"``).
    """

    data: np.ndarray
    path: Path
    pixel_size: tuple[float, float] | None = None
    unit: str | None = None


# --------------------------------------------------------------------------- reading


def read_image(
    path: str | os.PathLike,
    *,
    channel: int | None = None,
    plane: int | None = None,
    memory: MemoryBudget | None = None,
    colour: bool = False,
) -> Image:
    """Read a 2-D grayscale image from a TIFF, PNG or JPEG file.

    Parameters
    ----------
    path : path-like
        Image file.
    channel : int, optional
        Channel to keep from a multi-channel image. Without it, RGB/RGBA
        images are averaged over their colour channels (alpha dropped); other
        multi-channel images are refused.
    plane : int, optional
        Plane to keep from a Z or T stack; stacks are refused without it.
    memory : MemoryBudget, optional
        The memory guard (:mod:`segtool.memory`): the size the header
        declares, plus the command's working memory, is checked against it
        before any pixel is decoded.
    colour : bool, optional
        Keep colour: ``data`` is (3, Y, X), the red, green and blue planes
        of an RGB/RGBA image (alpha dropped), or a grey image repeated three
        times, so that a colour network (``--channels rgb``) reads grey
        and colour files alike. ``channel`` then picks nothing and must be
        None.

    Returns
    -------
    Image
        ``data`` is (Y, X) in the file's dtype, except averaged RGB (float32);
        with ``colour``, (3, Y, X) in the file's dtype.

    Raises
    ------
    InputError
        The file is missing, unreadable, not an image, truncated, empty, too
        large (for ``memory`` or at all), of an unsupported dtype, or has
        axes that need ``channel`` or ``plane`` to reduce to 2-D. What
        tifffile logs about a damaged file is added to the message.
    """
    path = Path(path)
    check_readable_file(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        data, axes, pixel_size, unit, photometric_rgb = _read_tiff(path, memory)
    elif suffix in (".png", ".jpg", ".jpeg"):
        data, axes = _read_pillow(path, memory)
        pixel_size, unit, photometric_rgb = None, None, data.ndim == 3
    else:
        raise InputError(f"unsupported file type {suffix or '(no extension)'!r}; expected one of {', '.join(IMAGE_SUFFIXES)}")
    if colour and channel is not None:
        raise InputError("a colour read keeps all of R, G and B: give no --channel with --channels rgb")
    data = reduce_to_2d(data, axes, channel=channel, plane=plane, rgb=photometric_rgb, keep_rgb=colour)
    _check_pixels(data)
    if colour and data.ndim == 2:
        data = np.repeat(data[np.newaxis], 3, axis=0)
    return Image(data=data, path=path, pixel_size=pixel_size, unit=unit)


def read_labels(
    path: str | os.PathLike, *, channel: int | None = None, plane: int | None = None, memory: MemoryBudget | None = None
) -> Image:
    """Read an instance label image (0 = background, 1..N objects).

    Any integer dtype is accepted and converted to uint16, or uint32 when a
    label exceeds 65535. Float images are accepted only if every value is a
    whole number (some tools save labels as float32).

    Raises
    ------
    InputError
        On anything :func:`read_image` refuses, negative labels, non-integer
        values, or labels beyond uint32.
    """
    image = read_image(path, channel=channel, plane=plane, memory=memory)
    return Image(to_label_dtype(image.data), image.path, image.pixel_size, image.unit)


#: Files that mark a folder as a Zarr store (v2 array / group, v3).
ZARR_MARKERS = (".zarray", ".zgroup", ".zattrs", "zarr.json")


def is_zarr_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Zarr store: a folder named ``*.zarr`` or holding Zarr metadata.

    Examples
    --------
    >>> is_zarr_store("no/such/image.zarr")
    False
    """
    path = Path(path)
    if not path.is_dir():
        return False
    return path.suffix.lower() == ".zarr" or any((path / name).is_file() for name in ZARR_MARKERS)


def check_readable_file(path: Path) -> None:
    if not path.exists():
        raise InputError("no such file")
    if is_zarr_store(path):
        raise InputError("Zarr images are read block by block: add --block-size N (big-image mode, needs segtool[distributed])")
    if path.is_dir():
        raise InputError("is a directory, not an image file")
    if not os.access(path, os.R_OK):
        raise InputError("permission denied: file is not readable")
    if path.stat().st_size == 0:
        raise InputError("file is empty (0 bytes)")


def _read_tiff(path: Path, memory: MemoryBudget | None = None):
    # What tifffile logs about a damaged file goes into this file's one-line error.
    with collect_records("tifffile") as notes:
        try:
            return _decode_tiff(path, memory)
        except InputError as err:
            if notes:
                note = re.sub(r"^<[^>]*>\s*", "", notes[0])  # drop tifffile's "<TiffPage 0 @8>" prefix
                raise InputError(f"{first_line(err)} (tifffile: {note})") from err
            raise


def _plane_pixels(shape: tuple[int, ...], axes: str) -> int:
    """Pixels of the (Y, X) plane of an image of ``shape`` with tifffile ``axes``."""
    if len(axes) == len(shape) and "Y" in axes and "X" in axes:
        return int(shape[axes.index("Y")]) * int(shape[axes.index("X")])
    dims = shape[:-1] if axes.endswith("S") else shape
    return int(np.prod([int(n) for n in dims[-2:]], dtype=np.float64))


def _decode_tiff(path: Path, memory: MemoryBudget | None):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError("TIFF holds no image data")
            series = tif.series[0]
            axes = series.axes
            check_memory(series.shape, series.dtype, _plane_pixels(series.shape, axes), memory)
            nbytes = int(np.prod(series.shape, dtype=np.float64)) * np.dtype(series.dtype).itemsize
            if nbytes > MAX_IMAGE_BYTES:
                raise InputError(
                    f"image header claims {series.shape} {series.dtype} ({nbytes / 2**30:.0f} GiB), "
                    f"more than segtool loads at once ({MAX_IMAGE_BYTES // 2**30} GiB)"
                )
            page = series.pages[0] if series.pages else tif.pages[0]
            data = series.asarray()
            pixel_size, unit = tiff_calibration(tif, page)
            photometric_rgb = bool(page is not None and getattr(page, "photometric", None) == tifffile.PHOTOMETRIC.RGB)
    except InputError:
        raise
    except MemoryError as err:
        raise InputError("image is too large to load into memory") from err
    except Exception as err:  # tifffile raises many types on corrupt files
        raise InputError(f"cannot read TIFF (corrupt or truncated?): {first_line(err)}") from err
    return data, axes, pixel_size, unit, photometric_rgb


def _read_pillow(path: Path, memory: MemoryBudget | None = None):
    import warnings

    from PIL import Image as PILImage

    try:
        # Pillow warns (DecompressionBombWarning) about images it will still open; the guard decides here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            img = PILImage.open(path)
        with img:
            bands = len(img.getbands())
            dtype = np.uint16 if img.mode.startswith("I;16") else np.int32 if img.mode == "I" else np.float32 if img.mode == "F" else np.uint8
            shape = (img.height, img.width) if bands == 1 else (img.height, img.width, bands)
            check_memory(shape, dtype, img.width * img.height, memory)
            if img.width * img.height * 8 > MAX_IMAGE_BYTES:
                raise InputError(f"image of {img.width}x{img.height} pixels is too large to load")
            img.load()
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif img.mode in ("LA", "PA"):
                img = img.convert("L")
            elif img.mode == "CMYK":
                img = img.convert("RGB")
            data = np.asarray(img)
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"cannot read image: {first_line(err)}") from err
    axes = "YX" if data.ndim == 2 else "YXS"
    return data, axes


def reduce_to_2d(
    data: np.ndarray, axes: str, *, channel: int | None, plane: int | None, rgb: bool, keep_rgb: bool = False
) -> np.ndarray:
    """Drop singleton axes, select the plane and channel, and refuse what stays ambiguous.

    With ``keep_rgb``, an RGB(A) image comes back as (3, Y, X) instead of averaged.
    """
    if data.ndim < 2 or data.size == 0:
        raise InputError(f"image has no 2-D pixel data (shape {data.shape})")
    if len(axes) != data.ndim:
        axes = "Q" * (data.ndim - 2) + "YX" if data.ndim >= 2 else axes
    keep = [i for i, (size, ax) in enumerate(zip(data.shape, axes)) if size > 1 or ax in "YX"]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"image has axes {axes!r} with no Y/X plane")

    plane_axes = [ax for ax in axes if ax in PLANE_AXES]
    if len(plane_axes) > 1:
        sizes = ", ".join(f"{ax}={data.shape[axes.index(ax)]}" for ax in plane_axes)
        raise InputError(f"image is a {len(plane_axes) + 2}-D stack ({sizes}); segtool works on 2-D planes: split it into single planes first")
    if plane_axes:
        ax = plane_axes[0]
        n = data.shape[axes.index(ax)]
        if plane is None:
            raise InputError(f"image is a stack of {n} planes along axis {ax} (axes {axes}); pick one with --plane N (0..{n - 1})")
        if not 0 <= plane < n:
            raise InputError(f"--plane {plane} is out of range: axis {ax} has {n} planes (0..{n - 1})")
        data = np.take(data, plane, axis=axes.index(ax))
        axes = axes.replace(ax, "")
    elif plane not in (None, 0):
        raise InputError(f"--plane {plane} given but the image has a single plane")

    channel_axes = [ax for ax in axes if ax in _CHANNEL_AXES]
    if len(channel_axes) > 1:
        raise InputError(f"image has several channel axes ({axes}); convert it to one channel axis first")
    if channel_axes:
        index = axes.index(channel_axes[0])
        n = data.shape[index]
        if channel is not None:
            if not 0 <= channel < n:
                raise InputError(f"--channel {channel} is out of range: the image has {n} channels (0..{n - 1})")
            data = np.take(data, channel, axis=index)
        elif keep_rgb and (rgb or channel_axes[0] == "S") and n in (3, 4):
            data = np.moveaxis(data, index, 0)[:3]
            axes = channel_axes[0] + axes.replace(channel_axes[0], "")
            if axes[1:] == "XY":
                data = np.swapaxes(data, 1, 2)
            return np.ascontiguousarray(data)
        elif (rgb or channel_axes[0] == "S") and n in (3, 4):
            # RGB(A) default: mean of the colour channels, which keeps a signal that sits in any one of them.
            data = np.moveaxis(data, index, -1)[..., :3].astype(np.float32).mean(axis=-1)
        else:
            raise InputError(f"image has {n} channels (axes {axes}); pick one with --channel N (0..{n - 1})")
        axes = axes.replace(channel_axes[0], "")
    elif channel not in (None, 0):
        raise InputError(f"--channel {channel} given but the image has a single channel")

    if axes != "YX":
        if axes == "XY":
            data = data.T
        else:
            raise InputError(f"cannot reduce axes {axes!r} to a 2-D image")
    return data


def _check_pixels(data: np.ndarray) -> None:
    if data.dtype.kind not in "uifb":
        raise InputError(f"unsupported pixel type {data.dtype}")
    if data.size == 0 or 0 in data.shape:
        raise InputError(f"image has no pixels (shape {data.shape})")


# --------------------------------------------------------------------------- writing


def check_output_free(path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Refuse an output path that is a folder, or an existing file unless ``overwrite``.

    :func:`atomic_output` calls this; commands call it too, to refuse early,
    before hours of work, an output they would not be allowed to write.

    Raises
    ------
    OutputError
        If ``path`` is a directory, or exists and ``overwrite`` is false.

    Examples
    --------
    >>> check_output_free("no/such/file.tif")
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: output path is a directory")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: output exists; use --overwrite to replace it")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a file atomically: yield a temporary path, rename it onto ``path`` on success.

    The temporary file lives in the destination folder (so the final rename
    does not cross file systems) and is hidden (leading dot, ``.part``
    ending), so folder scans never take it for a result. On any exception,
    including Ctrl-C, the temporary file is removed and ``path`` is left as it
    was. Without ``overwrite`` a file that appeared meanwhile is never replaced.

    Parameters
    ----------
    path : path-like
        Final destination. Its folder is created if missing.
    overwrite : bool, optional
        Replace an existing ``path``; without it an existing file is an error.

    Raises
    ------
    OutputError
        If ``path`` exists and ``overwrite`` is false (:class:`OutputExistsError`), the
        folder cannot be created or written, or writing fails (e.g. disk full).
    """
    path = Path(path)
    check_output_free(path, overwrite=overwrite)

    def publish(temp: Path) -> None:
        if not temp.exists():
            raise OutputError(f"{path}: nothing was written")
        (os.replace if overwrite else publish_new)(temp, path)

    def discard(temp: Path) -> None:
        with contextlib.suppress(OSError):
            temp.unlink()

    with staged_output(path, publish=publish, discard=discard) as temp:
        yield temp


@contextlib.contextmanager
def staged_output(path: Path, *, publish: Callable[[Path], None], discard: Callable[[Path], None]) -> Iterator[Path]:
    """Yield a hidden ``.part`` path next to ``path``; publish it on success, discard it on failure.

    What every atomic output shares, a file (:func:`atomic_output`) or a Zarr folder
    (:mod:`segtool.distributed.labelstore`); an ``OSError`` becomes an ``OutputError``.

    Parameters
    ----------
    path : Path
        Final destination; its folder is created if missing.
    publish : callable
        ``publish(temp)`` moves the finished ``temp`` onto ``path``.
    discard : callable
        ``discard(temp)`` removes it after any exception (Ctrl-C too); must not raise.

    Raises
    ------
    OutputError
        If the folder cannot be created, or writing or publishing fails.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{path.parent}: cannot create output folder: {err.strerror or err}") from err
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        yield temp
        publish(temp)
    except BaseException as err:
        discard(temp)
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise OutputError(f"{path}: cannot write: {err.strerror or first_line(err)}") from err
        raise


def _resolution_kwargs(pixel_size, unit) -> dict:
    if pixel_size is None:
        return {}
    py, px = (float(v) for v in pixel_size)
    if not (px > 0 and py > 0):
        return {}
    return {"resolution": (1.0 / px, 1.0 / py)}


def write_tiff(path: Path, data: np.ndarray, *, pixel_size, unit, overwrite: bool, imagej: bool) -> Path:
    import tifffile

    kwargs = _resolution_kwargs(pixel_size, unit)
    big = data.nbytes > 2**31
    large = max(data.shape) > 8192
    if big or large:
        imagej = False  # ImageJ hyperstacks cannot be tiled or BigTIFF; tiled BigTIFF opens in Fiji via Bio-Formats
        kwargs["tile"] = (512, 512)
    if imagej:
        metadata = {"axes": "YX"}
        if unit and pixel_size is not None:
            metadata["unit"] = unit
        kwargs["metadata"] = metadata
    elif unit and pixel_size is not None:
        kwargs["resolutionunit"] = "CENTIMETER" if unit == "cm" else "NONE"
        kwargs["metadata"] = {"unit": unit} if not (big or large) else None
    with atomic_output(path, overwrite=overwrite) as temp:
        tifffile.imwrite(
            temp,
            data,
            imagej=imagej,
            bigtiff=big,
            compression="zlib",
            software="segtool",
            **kwargs,
        )
    return path


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    *,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an instance label image as a zlib-compressed TIFF.

    Labels are stored exactly: uint16 while the largest label fits, uint32
    above 65535 (never wrapped). uint16 files are ImageJ hyperstacks so Fiji
    opens them with the right dimensions and calibration; uint32 files are
    plain TIFFs (ImageJ has no 32-bit integer type; Fiji reads them through
    Bio-Formats).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        If ``labels`` is not a 2-D non-negative integer image.
    OutputError
        If the file exists (without ``overwrite``) or cannot be written.
    """
    labels = to_label_dtype(labels)
    if labels.ndim != 2:
        raise InputError(f"label image must be 2-D, got shape {labels.shape}")
    return write_tiff(Path(path), labels, pixel_size=pixel_size, unit=unit, overwrite=overwrite, imagej=labels.dtype == np.uint16)


def write_float(
    path: str | os.PathLike,
    array: np.ndarray,
    *,
    pixel_size: tuple[float, float] | None = None,
    unit: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a float32 image (2-D, or (C, Y, X) channels) as an ImageJ-compatible TIFF."""
    data = np.asarray(array, dtype=np.float32)
    if data.ndim not in (2, 3):
        raise InputError(f"float image must be 2-D or (C, Y, X), got shape {data.shape}")
    path = Path(path)
    if data.ndim == 3:
        import tifffile

        kwargs = _resolution_kwargs(pixel_size, unit)
        metadata = {"axes": "CYX"}
        if unit and pixel_size is not None:
            metadata["unit"] = unit
        with atomic_output(path, overwrite=overwrite) as temp:
            tifffile.imwrite(temp, data, imagej=True, compression="zlib", metadata=metadata, software="segtool", **kwargs)
        return path
    return write_tiff(path, data, pixel_size=pixel_size, unit=unit, overwrite=overwrite, imagej=True)


def write_png(path: str | os.PathLike, image: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write a uint8 grayscale (Y, X) or RGB (Y, X, 3) image as PNG."""
    from PIL import Image as PILImage

    data = np.asarray(image)
    if data.dtype != np.uint8 or data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[2] not in (3, 4)):
        raise InputError(f"PNG output needs uint8 (Y, X) or (Y, X, 3|4) data, got {data.dtype} {data.shape}")
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as temp:
        PILImage.fromarray(data).save(temp, format="PNG")
    return path
