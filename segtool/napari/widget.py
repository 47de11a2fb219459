"""napari widget "Segment with segtool": U-Net or baseline on the selected image layer, in a worker thread.

The computation is :func:`segtool.napari.segment.segment`; the widget only
gathers the options, runs it in a napari worker thread (the viewer stays
responsive), shows progress and adds a Labels layer with the image layer's
scale and translation.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from segtool.errors import InputError
from segtool.napari.segment import (
    METHODS,
    POLARITIES,
    PRECISIONS,
    THRESHOLDS,
    SegmentOptions,
    check_model,
    image_plane,
    segment,
)
from segtool.model.shipped import DEFAULT_MODEL, SHIPPED_MODELS

__all__ = ["MODEL_FILE", "SegmentWidget", "model_choices", "wrappable"]

#: The model menu's last entry: use the file in the "model file" field instead of a shipped model.
MODEL_FILE = "file"


def model_choices() -> list[tuple[str, str]]:
    """The model menu: each shipped model by the name ``-m`` takes (the default marked), then "model file...".

    Returns ``(text shown, value)`` pairs.

    Examples
    --------
    >>> model_choices()[0]
    ('nuclei (shipped, default)', 'nuclei')
    >>> model_choices()[-1]
    ('model file...', 'file')
    """
    shipped = [(f"{m.name} (shipped{', default' if m.name == DEFAULT_MODEL else ''})", m.name) for m in SHIPPED_MODELS]
    return [*shipped, ("model file...", MODEL_FILE)]


def wrappable(text: str, *, run: int = 20) -> str:
    """``text`` with a zero-width space after every ``run`` characters without a space, so Qt can wrap it there.

    Qt wraps a label at spaces and after ``/`` only; a long file or folder
    name would otherwise run past the panel's edge.

    Examples
    --------
    >>> wrappable("not found: " + "x" * 45, run=20).count("\u200b")
    2
    >>> wrappable("short words stay as they are")
    'short words stay as they are'
    """
    return re.sub(rf"(\S{{{run}}})(?=\S)", "\\1\u200b", text)


def _message_label():
    """A label for messages that wraps them to the panel's width; its ``value`` stays the message as given."""
    from magicgui import widgets
    from qtpy.QtWidgets import QSizePolicy

    class MessageLabel(widgets.Label):
        _message = ""

        def get_value(self) -> str:
            return self._message

        def set_value(self, value) -> None:
            self._message = str(value)
            super().set_value(wrappable(self._message))

    label = MessageLabel(value="")
    label.native.setWordWrap(True)
    # word wrap alone still asks the dock for the text's whole width: the layout ignores the label's own width
    label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    return label


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
        self.model_choice = widgets.ComboBox(label="model", choices=model_choices(), value=DEFAULT_MODEL,
                                             tooltip="a model shipped with segtool (segtool model list), "
                                                     "or a model file of yours, as segtool predict -m takes")
        # nullable: an empty field is empty (a plain FileEdit shows the working folder for "")
        self.model = widgets.FileEdit(label="model file", mode="r", nullable=True, filter="segtool models (*.pt *.zip)",
                                      tooltip="segtool model (.pt) or segtool bioimage.io package (.zip)")
        self.model_info = _message_label()
        self.tta = widgets.CheckBox(label="test-time augmentation", value=False)
        self.precision = widgets.ComboBox(label="precision", choices=list(PRECISIONS), value="auto",
                                          tooltip="network arithmetic, as segtool predict --precision: auto (its "
                                                  "default) is bf16 where the hardware runs it natively, else fp32")
        self.degree = widgets.SpinBox(label="background degree", value=2, min=0, max=8)
        self.threshold = widgets.ComboBox(label="threshold", choices=list(THRESHOLDS), value="otsu")
        self.polarity = widgets.ComboBox(label="polarity", choices=list(POLARITIES), value="bright")
        self.split = widgets.CheckBox(label="split touching objects", value=False)
        self.smooth = widgets.FloatSpinBox(label="smooth (sigma px)", value=0.0, min=0.0, max=20.0, step=0.5)
        self.fill_holes = widgets.CheckBox(label="fill holes", value=False)
        self.min_size = widgets.SpinBox(label="min size (px, 0 = default)", value=0, min=0, max=100000)
        self.run_button = widgets.PushButton(text="Segment")
        self.progress = widgets.ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = _message_label()
        self._unet_only = [self.model_choice, self.model, self.model_info, self.tta, self.precision]
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
        self.model_choice.changed.connect(self._show_model)
        self.model.changed.connect(self._model_file_changed)
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
        self._show_model()

    def _model_file_changed(self, _value=None) -> None:
        if self.model.value is not None:
            self.model_choice.value = MODEL_FILE  # a file given (typed, chosen or set) is the model to run
        self._show_model()

    def _show_model(self, _value=None) -> None:
        """Show the file field only for "model file...", and say which model will run."""
        choice = self.model_choice.value
        self.model.visible = self.method.value == "U-Net" and choice == MODEL_FILE
        if choice != MODEL_FILE:
            summary = next(m.summary for m in SHIPPED_MODELS if m.name == choice)
            self.model_info.value = f"runs {choice}: {summary}"
        elif self.model.value is None:
            self.model_info.value = "choose a model file (.pt, or a segtool bioimage.io .zip)"
        else:
            self.model_info.value = f"runs {Path(self.model.value).name}"

    def _model_spec(self) -> str:
        """What ``segtool predict -m`` would be given: a shipped model's name, or the model file."""
        if self.model_choice.value != MODEL_FILE:
            return self.model_choice.value
        if self.model.value is None:
            raise InputError("no model file chosen: choose one, or a shipped model")
        return str(self.model.value)

    def options(self) -> SegmentOptions:
        """The options the widget shows, as one frozen object."""
        model = self._model_spec() if self.method.value == "U-Net" else None  # the baseline needs no model
        return SegmentOptions(method=self.method.value, model=model, tta=bool(self.tta.value),
                              precision=self.precision.value,
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
