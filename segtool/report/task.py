"""What one result means for ``segtool report``: read its labels (and image), measure, write its thumbnails.

:class:`ReportTask` is a :class:`segtool.batch.Task`, so ``--jobs`` runs it
in worker processes with the batch machinery every command uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segtool.errors import InputError, OutputError
from segtool.outputs import OutputOptions

__all__ = ["ReportTask", "THUMBS_DIR"]

#: Sub-folder of the report that holds the thumbnails.
THUMBS_DIR = "thumbs"


@dataclass(frozen=True)
class ReportTask:
    """Per-result work of ``segtool report`` (picklable for ``--jobs``).

    Attributes
    ----------
    output : OutputOptions
        ``folder``: the report's folder (thumbnails go to its ``thumbs/``);
        ``overwrite``: replace thumbnails already there (a report rebuilt).
    names : dict of str to str
        Label path -> thumbnail name (unique within the report).
    images : dict of str to str
        Label path -> its image, where the manifest named one.
    image_spec : Path or None
        ``--image``: an image file, or a folder searched by name stem.
    size, quality : int
        Thumbnail side (px) and JPEG quality.
    """

    output: OutputOptions
    names: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    image_spec: Path | None = None
    size: int = 128
    quality: int = 80

    def _thumb(self, path: Path, suffix: str = "") -> Path:
        return self.output.folder / THUMBS_DIR / f"{self.names.get(str(path), path.stem)}{suffix}.jpg"

    def planned_outputs(self, path: Path) -> dict[str, Path]:
        return {"thumb": self._thumb(path)}

    def _image_path(self, path: Path) -> Path | None:
        if str(path) in self.images:
            return Path(self.images[str(path)])
        if self.image_spec is None:
            return None
        from segtool.pairing import find_image

        return find_image(path, self.image_spec)

    def run(self, path: Path) -> dict[str, Any]:
        from segtool.io import read_image, read_labels
        from segtool.report.stats import label_figures, saturated_share
        from segtool.report.thumbs import thumbnail
        from segtool.volume.io import probe_stack, read_label_volume, read_volume

        image_path = self._image_path(path)
        stack = probe_stack(path) is not None
        labels = read_label_volume(path).data if stack else read_labels(path).data
        image = None
        if image_path is not None:
            try:
                image = read_volume(image_path).data if stack else read_image(image_path).data
            except InputError as err:
                raise InputError(f"image {image_path}: {err}") from None
            if image.shape != labels.shape:
                raise InputError(f"image {image_path} is {image.shape} but the labels are {labels.shape}")
        figures: dict[str, Any] = dict(label_figures(labels))
        figures["saturated_share"] = None if image is None else saturated_share(image)
        figures["shape"] = list(labels.shape)
        figures["image"] = None if image_path is None else str(image_path)
        outputs = {"thumb": self._thumb(path)}
        if stack:
            # a Z stack: its middle plane, and the maximum projection of image and labels
            z = labels.shape[0] // 2
            self._write(outputs["thumb"], thumbnail(labels[z], None if image is None else image[z], size=self.size))
            outputs["thumb_max"] = self._thumb(path, "_max")
            self._write(outputs["thumb_max"], thumbnail(labels.max(axis=0), None if image is None else
                                                        image.max(axis=0), size=self.size))
        else:
            self._write(outputs["thumb"], thumbnail(labels, image, size=self.size))
        figures["_outputs"] = outputs
        return figures

    def _write(self, target: Path, rgb: np.ndarray) -> None:
        from segtool.io import atomic_output
        from segtool.report.thumbs import encode_jpeg

        data = encode_jpeg(rgb, quality=self.quality)
        try:
            with atomic_output(target, overwrite=self.output.overwrite) as temp:
                temp.write_bytes(data)
        except OSError as err:
            raise OutputError(f"{target}: cannot write the thumbnail ({err.strerror or err})") from None
