"""napari widget "Segment with segtool": U-Net or baseline on the selected image layer, in a worker thread.

The computation is :func:`segtool.napari.segment.segment`; the widget only
gathers the options, runs it in a napari worker thread (the viewer stays
responsive), shows progress and adds a Labels layer with the image layer's
scale and translation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segtool.errors import InputError
from segtool.napari.segment import METHODS, POLARITIES, THRESHOLDS, SegmentOptions, check_model, image_plane, segment

__all__ = ["SegmentWidget"]


def _qt_widget_base():
    """QWidget, imported only when the widget is built (napari and Qt are an optional extra)."""
    try:
        from qtpy.QtWidgets import QWidget
    except ImportError:
        raise InputError("the napari widget needs the napari extra: pip install 'segtool[napari]'") from None
    return QWidget


def _make_relay():
    from qtpy.QtCore import QObject, Signal

    class _Relay(QObject):
        # Emitted from the worker thread; Qt queues it to the main thread, where the bar is updated.
        progress = Signal(int, int)

    return _Relay()


class SegmentWidget(_qt_widget_base()):  # type: ignore[misc]
    """Dock widget: pick an image layer and a method, press "Segment"; a Labels layer appears.

    Parameters
    ----------
    napari_viewer : napari.Viewer or napari.components.ViewerModel
        Injected by napari.
    """

    def __init__(self, napari_viewer) -> None:
        from magicgui import widgets
        from qtpy.QtWidgets import QVBoxLayout

        super().__init__()
        self.viewer = napari_viewer
        self.image_layer = widgets.ComboBox(label="image", choices=self._image_layers)
        self.method = widgets.ComboBox(label="method", choices=list(METHODS), value="U-Net")
        self.model = widgets.FileEdit(label="model", mode="r", filter="segtool models (*.pt *.zip)",
                                      tooltip="segtool model (.pt) or segtool bioimage.io package (.zip); "
                                              "empty: the model shipped with segtool")
        self.model.value = ""
        self.tta = widgets.CheckBox(label="test-time augmentation", value=False)
        self.degree = widgets.SpinBox(label="background degree", value=2, min=0, max=8)
        self.threshold = widgets.ComboBox(label="threshold", choices=list(THRESHOLDS), value="otsu")
        self.polarity = widgets.ComboBox(label="polarity", choices=list(POLARITIES), value="bright")
        self.split = widgets.CheckBox(label="split touching objects", value=False)
        self.smooth = widgets.FloatSpinBox(label="smooth (sigma px)", value=0.0, min=0.0, max=20.0, step=0.5)
        self.fill_holes = widgets.CheckBox(label="fill holes", value=False)
        self.min_size = widgets.SpinBox(label="min size (px, 0 = default)", value=0, min=0, max=100000)
        self.run_button = widgets.PushButton(text="Segment")
        self.progress = widgets.ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = widgets.Label(value="")
        self._unet_only = [self.model, self.tta]
        self._baseline_only = [self.degree, self.threshold, self.polarity, self.split, self.smooth, self.fill_holes]
        self.container = widgets.Container(widgets=[
            self.image_layer, self.method, *self._unet_only, *self._baseline_only, self.min_size,
            self.run_button, self.progress, self.status,
        ])
        layout = QVBoxLayout()
        layout.addWidget(self.container.native)
        self.setLayout(layout)
        self._relay = _make_relay()
        self._relay.progress.connect(self._on_progress)
        self.worker = None
        self.method.changed.connect(self._show_method_options)
        self.run_button.changed.connect(self.run)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._show_method_options()

    # ------------------------------------------------------------------ state

    def _image_layers(self, _widget=None) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, _event=None) -> None:
        self.image_layer.reset_choices()

    def _show_method_options(self, _value=None) -> None:
        unet = self.method.value == "U-Net"
        for widget in self._unet_only:
            widget.visible = unet
        for widget in self._baseline_only:
            widget.visible = not unet

    def options(self) -> SegmentOptions:
        """The options the widget shows, as one frozen object."""
        value = self.model.value
        # an empty FileEdit holds a folder (".", shown as the working folder): that means the shipped model
        model = str(value) if value and not Path(value).is_dir() else None
        return SegmentOptions(method=self.method.value, model=model, tta=bool(self.tta.value),
                              degree=int(self.degree.value), threshold=self.threshold.value,
                              polarity=self.polarity.value, min_size=int(self.min_size.value) or None,
                              split=bool(self.split.value), smooth=float(self.smooth.value),
                              fill_holes=bool(self.fill_holes.value))

    # ------------------------------------------------------------------ running

    def run(self, _value=None):
        """Start segmenting the selected layer in a worker thread; returns the worker (None if nothing to do)."""
        from superqt.utils import create_worker

        layer = self.image_layer.value
        if layer is None:
            self.status.value = "no image layer selected"
            return None
        try:
            current = tuple(getattr(self.viewer.dims, "current_step", ()))
            image = image_plane(layer.data, rgb=bool(getattr(layer, "rgb", False)), keep_colour=True,
                                current_step=current)
            options = self.options()
            check_model(options)  # an unusable model file is refused here, before a worker starts
        except InputError as err:
            self.status.value = f"error: {err}"
            return None
        self.run_button.enabled = False
        self.progress.value = 0
        self.status.value = f"segmenting {layer.name} ({options.method})..."
        # errors are shown in the widget (_on_error); re-raised in a Qt slot, they would abort the whole viewer
        worker = create_worker(segment, image, options, on_progress=self._relay.progress.emit, _start_thread=False,
                               _ignore_errors=True)
        worker.returned.connect(lambda labels: self._add_labels(layer, labels, options))
        worker.errored.connect(self._on_error)
        worker.finished.connect(lambda: setattr(self.run_button, "enabled", True))
        self.worker = worker
        worker.start()
        return worker

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.max = max(1, int(total))
        self.progress.value = min(int(done), self.progress.max)

    def _add_labels(self, layer, labels: np.ndarray, options: SegmentOptions) -> None:
        scale = tuple(layer.scale[-2:])
        translate = tuple(layer.translate[-2:])
        metadata = {"segtool": {"method": options.method, "options": options.__dict__.copy()}}
        unit = (getattr(layer, "metadata", {}) or {}).get("unit")
        if unit:
            metadata["unit"] = unit
        self.viewer.add_labels(labels, name=f"{layer.name} labels", scale=scale, translate=translate,
                               metadata=metadata)
        self.status.value = f"{int(labels.max())} objects in {layer.name}"

    def _on_error(self, err: BaseException) -> None:
        from segtool.errors import SegtoolError, first_line

        message = first_line(err) if isinstance(err, SegtoolError) else f"{type(err).__name__}: {err}"
        self.status.value = f"error: {message}"
        try:
            from napari.utils.notifications import show_error

            show_error(f"segtool: {message}")
        except ImportError:  # pragma: no cover - napari is installed whenever this widget runs
            pass
