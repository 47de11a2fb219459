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
from segtool.inputs import output_path
from segtool.pipeline.options import ObjectOptions, TileOptions

__all__ = ["AUTO_WHOLE_PIXELS", "BAND_PIXELS", "PredictTask"]

#: Images with more pixels than this are predicted band by band unless --no-bands.
BAND_PIXELS = 4096 * 4096
#: With ``--diameter auto`` an image over BAND_PIXELS but not over this is read whole for its size estimate: when
#: its objects are larger than the model's, it is predicted in memory at the smaller scale (its network input then
#: at most BAND_PIXELS); otherwise in bands at its own size, as before. Reading it whole takes about 40 bytes a
#: pixel (1 GB here) where bands would take a few rows.
AUTO_WHOLE_PIXELS = 24 * 2**20


@dataclass
class PredictTask:
    """Per-file work of ``segtool predict`` (picklable for ``--jobs``/``--cluster``: each process loads the model once)."""

    model_path: Path
    device: str
    threads: int | None
    precision: str
    output_dir: Path | None
    overwrite: bool
    tile: int | None
    overlap: float | None
    batch_size: int | None
    tta: bool
    scale: float | None  # None: estimated per image (--diameter auto)
    prob_threshold: float | None
    min_size: int | None
    seed_threshold: float | None
    split_height: float | None
    save_prob: bool
    save_overlay: bool
    bands: bool | None
    band_rows: int | None
    halo: int
    channel: int | None
    plane: int | None
    tile_halo: int | None = None
    memory: Any = None  # the memory guard (segtool.memory.MemoryBudget, --max-memory)
    model_name: str | None = None  # what -m named (a shipped model's name, or the file), recorded per image
    diameter: float | None = None  # --diameter given by hand (recorded; it set ``scale``)
    _model: Any = field(default=None, init=False, repr=False, compare=False)
    # Z stacks (no --plane): predicted per plane, then 3-D objects (segtool.volume.predict).
    z_spacing: float | None = None
    z_mode: str = "auto"
    stitch_threshold: float = 0.25

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
            from segtool.unet.predict import load_for_inference_cached

            # Cached per process: worker processes get the task without the model,
            # once per image, and must not reload the file for every image.
            self._model = load_for_inference_cached(
                self.model_path, device=self.device, threads=self.threads, precision=self.precision
            )
        return self._model

    def planned_outputs(self, path: Path) -> dict[str, Path]:
        outputs = {"labels": output_path(path, "_labels.tif", output_dir=self.output_dir)}
        if self.save_prob:
            outputs["prob"] = output_path(path, "_prob.tif", output_dir=self.output_dir)
        if self.save_overlay:
            outputs["overlay"] = output_path(path, "_overlay.png", output_dir=self.output_dir)
        return outputs

    def _tiling(self) -> TileOptions:
        return TileOptions(tile=self.tile, overlap=self.overlap, tile_halo=self.tile_halo, batch_size=self.batch_size,
                           tta=self.tta, scale=1.0 if self.scale is None else self.scale)

    def _objects(self) -> ObjectOptions:
        return ObjectOptions(prob_threshold=self.prob_threshold, min_size=self.min_size,
                             seed_threshold=self.seed_threshold, split_height=self.split_height)

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
        """Stage 1: read and normalise (a large image is only looked at: the network stage predicts it in bands)."""
        import time

        from segtool.io import read_image
        from segtool.unet.bigimage import open_lazy
        from segtool.unet.predict import normalize_for_model
        from segtool.tasks.stack import is_z_stack

        start = time.perf_counter()
        if is_z_stack(path, plane=self.plane, z_spacing=self.z_spacing):
            return {"stack_path": path}  # the network stage predicts it plane by plane
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
        estimate_whole = self.scale is None and not self.bands
        if self.bands is not False and self.plane is None and banded:
            lazy = open_lazy(path, channel=self.channel, input_transform=transform)
            if lazy is not None:
                with lazy:
                    if self.bands or lazy.size > BAND_PIXELS:
                        if not (estimate_whole and lazy.size <= AUTO_WHOLE_PIXELS):
                            _warm_network(model, lazy.size)
                            return {"lazy_path": path, "outputs": outputs}
        image = read_image(path, channel=self.channel, plane=self.plane, memory=self.memory, colour=colour)
        pixels = image.data.shape[-2] * image.data.shape[-1]
        _warm_network(model, pixels)
        large = banded and (self.bands or (self.bands is None and pixels > BAND_PIXELS))
        if large and not (estimate_whole and pixels <= AUTO_WHOLE_PIXELS):
            return {"large_image": image, "outputs": outputs}
        stages = {"read": time.perf_counter() - start}
        start = time.perf_counter()
        normalized = normalize_for_model(image.data, model, scale=1.0 if self.scale is None else self.scale)
        stages["normalize"] = time.perf_counter() - start
        size = None
        if self.scale is None:
            from segtool.unet.predict import fit_to_training_size

            start = time.perf_counter()
            normalized, size = fit_to_training_size(normalized, model, objects=self._objects())
            stages["size"] = time.perf_counter() - start
            if large and (size is None or size.scale * size.scale * pixels > BAND_PIXELS):
                return {"large_image": image, "outputs": outputs, "size": size}  # still large at its scale: bands
        return {"image": image, "normalized": normalized, "outputs": outputs, "stages": stages, "size": size}

    def infer(self, state: dict[str, Any]):
        """Stage 2: the network, tile by tile (a large image: all of it, band by band, on this thread)."""
        from segtool.pipeline.stream import Finished
        from segtool.unet.bigimage import open_lazy
        from segtool.unet.predict import predict_maps

        if "stack_path" in state:
            from segtool.tasks.stack import predict_stack_task

            return Finished(predict_stack_task(self, state["stack_path"]))
        if "lazy_path" in state:
            with open_lazy(state["lazy_path"], channel=self.channel, input_transform=self.model().config.input) as lazy:
                return Finished(self._run_bands(lazy, self.model(), state["outputs"]))
        if "large_image" in state:
            from segtool.unet.intake import apply_input_transform

            image = state["large_image"]
            # the transform of the whole image, as in memory; the bands then see one plane of the network's input
            plane = apply_input_transform(image.data, self.model().config.input)
            return Finished(self._run_bands(plane, self.model(), state["outputs"],
                                            calibration=(image.pixel_size, image.unit), size=state.get("size")))
        size = state.get("size")
        if (size.scale if size is not None else (1.0 if self.scale is None else self.scale)) == 1.0:
            from segtool.unet.bands import label_by_tile_rows

            # Several tile rows: each is labelled while the network computes the next (the same labels).
            done = label_by_tile_rows(state["normalized"], self.model(), tiling=self._tiling(),
                                      objects=self._objects(), stages=state["stages"])
            if done is not None:
                del state["normalized"]
                labels, maps, n_tiles = done
                state.update(labels=labels, maps=maps, n_tiles=n_tiles)
                return state
        maps, n_tiles = predict_maps(
            state.pop("normalized"), self.model(), state["image"].data.shape[-2:], tiling=self._tiling(),
            stages=state["stages"],
        )
        state.update(maps=maps, n_tiles=n_tiles)
        return state

    def finish(self, state: dict[str, Any]) -> dict[str, Any]:
        """Stage 3: objects from the maps, then the outputs."""
        import time

        import numpy as np

        from segtool.baseline import empty_image_reason
        from segtool.io import write_float, write_labels, write_png
        from segtool.overlay import outline_overlay
        from segtool.unet.instances import maps_to_labels
        from segtool.unet.predict import scaled_objects

        image, maps, outputs, stages = state["image"], state["maps"], state["outputs"], state["stages"]
        model = self.model()
        start = time.perf_counter()
        size = state.get("size")
        scale = size.scale if size is not None else (1.0 if self.scale is None else self.scale)
        options = scaled_objects(self._objects(), model.config, scale)
        labels = state["labels"] if "labels" in state else maps_to_labels(maps, target=model.config.target, **options)
        # An empty well: percentile normalisation would stretch its uneven illumination into a bright blob.
        empty_reason = empty_image_reason(image.data if image.data.ndim == 2 else image.data.mean(axis=0, dtype=np.float32))
        if empty_reason is not None:
            labels = np.zeros_like(labels)
        # (labelled beside the network: the bands' labelling is already counted)
        stages["postprocess"] = stages.get("postprocess", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        calibration = {"pixel_size": image.pixel_size, "unit": image.unit, "overwrite": self.overwrite}
        write_labels(outputs["labels"], labels, **calibration)
        if self.save_prob:
            write_float(outputs["prob"], maps, **calibration)
        if self.save_overlay:
            write_png(outputs["overlay"], outline_overlay(image.data, labels), overwrite=self.overwrite)
        stages["write"] = time.perf_counter() - start
        n_objects = int(labels.max()) if labels.size else 0
        return {
            "objects": n_objects,
            "empty_reason": empty_reason,
            "tiles": state["n_tiles"],
            "predict_seconds": round(sum(stages.get(k, 0.0) for k in ("normalize", "size", "network", "tiles", "postprocess")), 3),
            "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
            "shape": list(image.data.shape),
            "bands": 0,
            "model": self.model_name or str(self.model_path),
            **self._size_record(size, scale),
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
        from dataclasses import replace

        from segtool.unet.bigimage import predict_file_in_bands

        figures = predict_file_in_bands(
            source,
            model,
            outputs["labels"],
            prob_path=outputs.get("prob"),
            overlay_path=outputs.get("overlay"),
            overwrite=self.overwrite,
            band_rows=self.band_rows,
            halo=self.halo,
            tiling=replace(self._tiling(), scale=self.scale),  # None: estimated once, from a sample
            objects=self._objects(),
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
    from segtool.unet.predict import network_device_type

    return network_device_type(model.net)
