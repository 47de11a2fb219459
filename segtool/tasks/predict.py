"""What one input means for ``segtool predict``: a U-Net on a whole image, in bands, or on a Z stack.

:class:`PredictTask` is a :class:`segtool.batch.StagedTask`: read and
normalise, network, objects and writing are separate stages, which the
streamed schedule (:mod:`segtool.pipeline.stream`) overlaps across images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segtool.errors import InputError
from segtool.outputs import OutputOptions
from segtool.pipeline.options import SEAM_HALO, ObjectOptions, TileOptions
from segtool.volume.stitch import STITCH_THRESHOLD

__all__ = ["AUTO_WHOLE_PIXELS", "BAND_PIXELS", "Loaded", "PredictTask", "Predicted"]

#: Images with more pixels than this are predicted band by band unless --no-bands.
BAND_PIXELS = 4096 * 4096
#: With ``--diameter auto`` an image over BAND_PIXELS but not over this is read whole for its size estimate: when
#: its objects are larger than the model's, it is predicted in memory at the smaller scale (its network input then
#: at most BAND_PIXELS); otherwise in bands at its own size, as before. Reading it whole takes about 40 bytes a
#: pixel (1 GB here) where bands would take a few rows.
AUTO_WHOLE_PIXELS = 24 * 2**20


@dataclass(frozen=True)
class Loaded:
    """What the read stage hands the network stage for one input (see :meth:`PredictTask.load`).

    ``kind`` says how the network stage predicts it: ``"image"`` in memory
    from ``normalized`` (rescaled by ``size`` when the size was estimated);
    ``"large"`` band by band from the decoded ``image``; ``"lazy"`` band by
    band from the file at ``path``, never read whole; ``"stack"`` the Z stack
    at ``path`` plane by plane.
    """

    kind: str
    path: Path
    outputs: dict[str, Path]
    image: Any = None  # segtool.io.Image: "image" and "large"
    normalized: Any = None  # (C, h, w) float32: "image"
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage so far
    size: Any = None  # segtool.infer.sizing.SizeEstimate with --diameter auto, else None


@dataclass(frozen=True)
class Predicted:
    """What the network stage hands the last stage: the maps at the image's size (and labels if already made)."""

    image: Any  # segtool.io.Image
    outputs: dict[str, Path]
    stages: dict[str, float]
    size: Any
    maps: Any  # (C, H, W) float32
    n_tiles: int
    labels: Any = None  # labelled beside the network (segtool.infer.bands.label_by_tile_rows), else None


@dataclass
class PredictTask:
    """Per-file work of ``segtool predict`` (picklable for ``--jobs``/``--cluster``: each process loads the model once).

    ``tiling.scale`` None estimates the objects' size in each image
    (``--diameter auto``); ``objects`` override the model's tuned
    post-processing. Z stacks (no ``plane``) are predicted per plane, then
    3-D objects (:func:`segtool.tasks.stack.predict_stack_task`, with
    ``z_spacing``, ``z_mode`` and ``stitch_threshold``).
    """

    model_path: Path
    device: str
    threads: int | None
    precision: str
    output: OutputOptions
    tiling: TileOptions = TileOptions()
    objects: ObjectOptions = ObjectOptions()
    save_prob: bool = False
    save_overlay: bool = False
    bands: bool | None = None  # None: for images over BAND_PIXELS
    band_rows: int | None = None
    halo: int = SEAM_HALO
    channel: int | None = None
    plane: int | None = None
    memory: Any = None  # the memory guard (segtool.memory.MemoryBudget, --max-memory)
    model_name: str | None = None  # what -m named (a shipped model's name, or the file), recorded per image
    diameter: float | None = None  # --diameter given by hand (recorded; it set ``tiling.scale``)
    z_spacing: float | None = None
    z_mode: str = "auto"
    stitch_threshold: float = STITCH_THRESHOLD
    _model: Any = field(default=None, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None
        return state

    def use_model(self, loaded) -> None:
        """Use an already loaded, inference-prepared model (the CLI loads it once to check the file first)."""
        self._model = loaded

    def model(self):
        """The loaded, inference-prepared model (loaded on first use in each process)."""
        if self._model is None:
            from segtool.infer.network import load_for_inference_cached

            # Cached per process: worker processes get the task without the model,
            # once per image, and must not reload the file for every image.
            self._model = load_for_inference_cached(
                self.model_path, device=self.device, threads=self.threads, precision=self.precision
            )
        return self._model

    def planned_outputs(self, path: Path) -> dict[str, Path]:
        outputs = {"labels": self.output.path(path, "_labels.tif")}
        if self.save_prob:
            outputs["prob"] = self.output.path(path, "_prob.tif")
        if self.save_overlay:
            outputs["overlay"] = self.output.path(path, "_overlay.png")
        return outputs

    @property
    def scale(self) -> float:
        """The resize factor given (1.0 when the size is estimated per image: see :meth:`_scale_of`)."""
        return 1.0 if self.tiling.scale is None else float(self.tiling.scale)

    def _scale_of(self, size) -> float:
        """The resize factor used for an image whose size estimate is ``size`` (None: not estimated)."""
        return size.scale if size is not None else self.scale

    @property
    def finish_threads(self) -> int:
        """Images post-processed at once beside the network: the cores torch's threads leave free (at least 1)."""
        cores = os.cpu_count() or 1
        if self.device in ("cuda", "mps") or (self.device == "auto" and self._model is not None
                                               and _device_type(self._model) != "cpu"):
            return max(1, min(8, cores - 1))
        return max(1, cores - (self.threads or cores))

    def run(self, path: Path) -> dict[str, Any]:
        # The same three stages the streamed schedule (segtool.pipeline.stream) overlaps across images.
        from segtool.pipeline.stream import Finished

        state = self.load(path)
        if not isinstance(state, Finished):
            state = self.infer(state)
        return state.value if isinstance(state, Finished) else self.finish(state)

    def load(self, path: Path):
        """Stage 1: read and normalise (a large image is only looked at: the network stage predicts it in bands).

        Returns a :class:`Loaded`.
        """
        import time

        from segtool.io import read_image
        from segtool.pipeline.read import open_lazy
        from segtool.infer.predict import normalize_for_model
        from segtool.tasks.stack import is_z_stack

        start = time.perf_counter()
        if is_z_stack(path, plane=self.plane, z_spacing=self.z_spacing):
            return Loaded("stack", path, {})  # the network stage predicts it plane by plane
        model = self.model()
        outputs = self.planned_outputs(path)
        colour = model.config.reads_colour
        transform = model.config.input
        # bands feed the network one channel: a three-channel (--channels rgb) network is predicted whole
        banded = model.config.in_channels == 1
        if colour:
            if self.bands and not banded:
                raise InputError("--bands is not available with a colour (--channels rgb) model")
            if self.channel is not None:
                kind = "the hematoxylin input" if banded else "a colour (--channels rgb) model"
                raise InputError(f"--channel picks one channel; {kind} reads R, G and B")
        # --diameter auto may bring a large image of large objects under the band threshold
        estimate_whole = self.tiling.scale is None and not self.bands
        if self.bands is not False and self.plane is None and banded:
            lazy = open_lazy(path, channel=self.channel, input_transform=transform)
            if lazy is not None:
                with lazy:
                    if self.bands or lazy.size > BAND_PIXELS:
                        if not (estimate_whole and lazy.size <= AUTO_WHOLE_PIXELS):
                            _warm_network(model, lazy.size)
                            return Loaded("lazy", path, outputs)
        image = read_image(path, channel=self.channel, plane=self.plane, memory=self.memory, colour=colour)
        pixels = image.data.shape[-2] * image.data.shape[-1]
        _warm_network(model, pixels)
        large = banded and (self.bands or (self.bands is None and pixels > BAND_PIXELS))
        if large and not (estimate_whole and pixels <= AUTO_WHOLE_PIXELS):
            return Loaded("large", path, outputs, image=image)
        stages = {"read": time.perf_counter() - start}
        start = time.perf_counter()
        normalized = normalize_for_model(image.data, model, scale=self.scale)
        stages["normalize"] = time.perf_counter() - start
        size = None
        if self.tiling.scale is None:
            from segtool.infer.predict import fit_to_training_size

            start = time.perf_counter()
            normalized, size = fit_to_training_size(normalized, model, objects=self.objects)
            stages["size"] = time.perf_counter() - start
            if large and (size is None or size.scale * size.scale * pixels > BAND_PIXELS):
                return Loaded("large", path, outputs, image=image, size=size)  # still large at its scale: bands
        return Loaded("image", path, outputs, image=image, normalized=normalized, stages=stages, size=size)

    def infer(self, state: Loaded):
        """Stage 2: the network, tile by tile (a large image: all of it, band by band, on this thread).

        Returns a :class:`Predicted`, or the figures of a Z stack or of an image predicted in bands
        (:class:`segtool.pipeline.stream.Finished`).
        """
        from segtool.pipeline.stream import Finished
        from segtool.pipeline.read import open_lazy
        from segtool.infer.predict import predict_maps

        if state.kind == "stack":
            from segtool.tasks.stack import predict_stack_task

            return Finished(predict_stack_task(self, state.path))
        if state.kind == "lazy":
            with open_lazy(state.path, channel=self.channel, input_transform=self.model().config.input) as lazy:
                return Finished(self._run_bands(lazy, self.model(), state.outputs))
        if state.kind == "large":
            from segtool.intake import apply_input_transform

            image = state.image
            # the transform of the whole image, as in memory; the bands then see one plane of the network's input
            plane = apply_input_transform(image.data, self.model().config.input)
            return Finished(self._run_bands(plane, self.model(), state.outputs,
                                            calibration=(image.pixel_size, image.unit), size=state.size))
        keep = {"image": state.image, "outputs": state.outputs, "stages": state.stages, "size": state.size}
        if self._scale_of(state.size) == 1.0:
            from segtool.infer.bands import label_by_tile_rows

            # Several tile rows: each is labelled while the network computes the next (the same labels).
            done = label_by_tile_rows(state.normalized, self.model(), tiling=self.tiling, objects=self.objects,
                                      stages=state.stages)
            if done is not None:
                labels, maps, n_tiles = done
                return Predicted(**keep, maps=maps, n_tiles=n_tiles, labels=labels)
        maps, n_tiles = predict_maps(state.normalized, self.model(), state.image.data.shape[-2:], tiling=self.tiling,
                                     stages=state.stages)
        return Predicted(**keep, maps=maps, n_tiles=n_tiles)

    def finish(self, state: Predicted) -> dict[str, Any]:
        """Stage 3: objects from the maps, then the outputs."""
        import time

        import numpy as np

        from segtool.baseline import empty_image_reason
        from segtool.io import write_float, write_labels, write_png
        from segtool.overlay import outline_overlay
        from segtool.infer.instances import maps_to_labels
        from segtool.infer.predict import scaled_objects

        image, maps, outputs, stages = state.image, state.maps, state.outputs, state.stages
        model = self.model()
        start = time.perf_counter()
        scale = self._scale_of(state.size)
        labels = state.labels
        if labels is None:
            labels = maps_to_labels(maps, target=model.config.target, **scaled_objects(self.objects, model.config, scale))
        # An empty well: percentile normalisation would stretch its uneven illumination into a bright blob.
        empty_reason = empty_image_reason(image.data if image.data.ndim == 2 else image.data.mean(axis=0, dtype=np.float32))
        if empty_reason is not None:
            labels = np.zeros_like(labels)
        # (labelled beside the network: the bands' labelling is already counted)
        stages["postprocess"] = stages.get("postprocess", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        calibration = {"pixel_size": image.pixel_size, "unit": image.unit, "overwrite": self.output.overwrite}
        write_labels(outputs["labels"], labels, **calibration)
        if self.save_prob:
            write_float(outputs["prob"], maps, **calibration)
        if self.save_overlay:
            write_png(outputs["overlay"], outline_overlay(image.data, labels), overwrite=self.output.overwrite)
        stages["write"] = time.perf_counter() - start
        n_objects = int(labels.max()) if labels.size else 0
        return {
            "objects": n_objects,
            "empty_reason": empty_reason,
            "tiles": state.n_tiles,
            "predict_seconds": round(sum(stages.get(k, 0.0) for k in ("normalize", "size", "network", "tiles", "postprocess")), 3),
            "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
            "shape": list(image.data.shape),
            "bands": 0,
            "model": self.model_name or str(self.model_path),
            **self._size_record(state.size, scale),
        }

    def _size_record(self, size, scale: float) -> dict[str, Any]:
        """``diameter`` (estimated or given, in the image's pixels; None when unknown) and the ``scale`` used."""
        if size is not None:
            diameter = None if size.diameter is None else round(size.diameter, 2)
            return {"diameter": diameter, "diameter_source": "estimated", "scale": round(scale, 4)}
        if self.diameter is not None:
            return {"diameter": self.diameter, "diameter_source": "given", "scale": round(scale, 4)}
        return {"diameter": None, "diameter_source": None, "scale": round(scale, 4)}

    def _run_bands(self, source, model, outputs: dict[str, Path], calibration=None, size=None) -> dict[str, Any]:
        from segtool.infer.bands import predict_file_in_bands

        figures = predict_file_in_bands(
            source,
            model,
            outputs["labels"],
            prob_path=outputs.get("prob"),
            overlay_path=outputs.get("overlay"),
            overwrite=self.output.overwrite,
            band_rows=self.band_rows,
            halo=self.halo,
            tiling=self.tiling,  # scale None: estimated once, from a sample
            objects=self.objects,
            size=size,
        )
        figures["predict_seconds"] = figures.pop("seconds")
        figures["model"] = self.model_name or str(self.model_path)
        # the same keys as in memory; the empty-image rule needs the whole image at once, so bands never apply it
        figures.setdefault("empty_reason", None)
        figures.update(self._size_record(figures.pop("size"), figures.pop("scale")))
        return figures


def _warm_network(model, pixels: int) -> None:
    """Where the network of a large image loads on first use (onnxruntime handing big tiles to torch), start now."""
    warm = getattr(model.net, "warm_large", None)
    if warm is not None:
        warm(int(pixels))


def _device_type(model) -> str:
    from segtool.infer.network import network_device_type

    return network_device_type(model.net)
