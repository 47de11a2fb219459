"""Big-image mode of ``segtool baseline`` and ``segtool predict`` (``--block-size``).

Each input is opened lazily (:func:`~segtool.distributed.blockio.open_blocks`),
segmented block by block on the Dask cluster the command connected to, and its
labels are written either as tiled BigTIFF (``<stem>_labels.tif``, streamed one
row of blocks at a time through this process) or, with ``--zarr``, as OME-Zarr
(``<stem>_labels.ome.zarr``, written by the workers in parallel).

The tasks follow :class:`segtool.batch.Task`, so the batch runner gives them
the usual skip/overwrite rules, one-line errors and exit codes. Unlike folder
mode they run in the client process, one image after the other: the
parallelism is inside each image, across its blocks.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtool.errors import SegtoolError
from segtool.outputs import OutputOptions
from segtool.pipeline.options import ObjectOptions, TileOptions
from segtool.tasks.baseline import BaselineOptions

__all__ = ["BigBaselineTask", "BigPredictTask", "labels_suffix", "size_record"]


def labels_suffix(zarr: bool) -> str:
    """Name ending of the labels written in big-image mode."""
    return "_labels.ome.zarr" if zarr else "_labels.tif"


def _one_line_when_a_worker_dies(run):
    """Turn Dask's "worker lost" errors in ``run`` into a one-line SegtoolError (not "a bug in segtool")."""

    @functools.wraps(run)
    def guarded(self, path: Path) -> dict[str, Any]:
        try:
            return run(self, path)
        except Exception as err:
            name = type(err).__name__
            if name not in ("KilledWorker", "CommClosedError", "FutureCancelledError"):
                raise
            raise SegtoolError(
                f"a Dask worker died while processing this image's blocks ({name}; often out of memory): "
                "try a smaller --block-size or fewer workers per machine"
            ) from None

    return guarded


class _BlockTask:
    """What both block tasks share: one labels output, the input opened in blocks, the labels written."""

    def planned_outputs(self, path: Path) -> dict[str, Path]:
        return {"labels": self.output.path(path, labels_suffix(self.zarr))}

    def open(self, path: Path, input_transform: str = "intensity"):
        """``path`` read lazily as a Dask array of ``block_size`` blocks (:func:`~segtool.distributed.blockio.open_blocks`)."""
        from segtool.distributed.blockio import open_blocks

        return open_blocks(path, channel=self.channel, plane=self.plane, chunks=self.block_size,
                           input_transform=input_transform)

    def write(self, path: Path, result, image) -> None:
        """Write ``result.labels`` as tiled BigTIFF or, with ``zarr``, OME-Zarr, with ``image``'s calibration."""
        from segtool.distributed.labelstore import write_labels_tiff, write_labels_zarr

        writer = write_labels_zarr if self.zarr else write_labels_tiff
        writer(self.planned_outputs(path)["labels"], result.labels, n_objects=result.n_objects,
               pixel_size=image.pixel_size, unit=image.unit, overwrite=self.output.overwrite)


@dataclass(frozen=True)
class BigBaselineTask(_BlockTask):
    """``segtool baseline --block-size N``: exact fit and threshold, labels across block borders."""

    block_size: int
    zarr: bool
    output: OutputOptions
    options: BaselineOptions = BaselineOptions()
    channel: int | None = None
    plane: int | None = None

    @_one_line_when_a_worker_dies
    def run(self, path: Path) -> dict[str, Any]:
        from segtool.distributed.big_baseline import segment_baseline_blocks

        image = self.open(path)
        start = time.perf_counter()
        result = segment_baseline_blocks(image.data, **self.options.fixed_size())
        self.write(path, result, image)
        return {
            "objects": int(result.n_objects),
            "threshold": None if result.threshold is None else round(float(result.threshold), 6),
            "empty_reason": result.empty_reason,
            "polarity": result.polarity,
            "background": result.fit.summary(),
            "shape": list(image.data.shape),
            "blocks": int(image.data.npartitions),
            "cluster_seconds": round(time.perf_counter() - start, 3),
        }


@dataclass(frozen=True)
class BigPredictTask(_BlockTask):
    """``segtool predict --block-size N``: per-block U-Net with a halo, objects merged across borders."""

    model_path: Path
    block_size: int
    halo: int
    zarr: bool
    output: OutputOptions
    tiling: TileOptions = TileOptions()  # the in-memory run's tile grid and scale (scale None: estimated per image)
    objects: ObjectOptions = ObjectOptions()
    device: str = "cpu"
    threads: int | None = None
    channel: int | None = None
    plane: int | None = None
    precision: str = "fp32"
    #: the model's input transform (``UNetConfig.input``), known to the caller that loaded the model
    input_transform: str = "intensity"
    #: the object diameter given with --diameter (it set the scale), for the record
    diameter: float | None = None

    @_one_line_when_a_worker_dies
    def run(self, path: Path) -> dict[str, Any]:
        from segtool.distributed.big_predict import predict_blocks

        # the blocks come transformed, as the model reads them
        image = self.open(path, input_transform=self.input_transform)
        start = time.perf_counter()
        result = predict_blocks(
            image.data,
            self.model_path,
            transformed=True,
            block=self.block_size,
            halo=self.halo,
            device=self.device,
            threads=self.threads,
            precision=self.precision,
            tiling=self.tiling,
            objects=self.objects,
        )
        self.write(path, result, image)
        return {
            "objects": int(result.n_objects),
            "tiles": None,
            "blocks": int(result.blocks),
            "shape": list(image.data.shape),
            "predict_seconds": round(time.perf_counter() - start, 3),
            **size_record(result.size, result.scale, self.diameter),
        }


def size_record(size, scale: float, diameter: float | None = None) -> dict[str, Any]:
    """``diameter`` (estimated, or given with --diameter; None when unknown), ``diameter_source`` and ``scale``.

    Examples
    --------
    >>> size_record(None, 0.5, 42.0)
    {'diameter': 42.0, 'diameter_source': 'given', 'scale': 0.5}
    """
    if size is not None:
        estimated = None if size.diameter is None else round(size.diameter, 2)
        return {"diameter": estimated, "diameter_source": "estimated", "scale": round(scale, 4)}
    if diameter is not None:
        return {"diameter": diameter, "diameter_source": "given", "scale": round(scale, 4)}
    return {"diameter": None, "diameter_source": None, "scale": round(scale, 4)}
