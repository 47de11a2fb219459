"""The napari plugin: manifest, reader, writer, the widget's computation, and one headless viewer."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

# Qt without a display: set before anything creates the QApplication (software OpenGL for napari's canvas).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QT_OPENGL", "software")
os.environ.setdefault("LIBGL_ALWAYS_SOFTWARE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from skimage.draw import disk  # noqa: E402

import segtool  # noqa: E402
from segtool.errors import InputError  # noqa: E402
from segtool.io import read_labels, write_float, write_labels  # noqa: E402
from segtool.napari.reader import get_reader, prob_channel_names  # noqa: E402
from segtool.napari.segment import PRECISIONS, SegmentOptions, image_plane, segment  # noqa: E402
from segtool.napari.writer import write_labels as napari_write_labels  # noqa: E402

MANIFEST = Path(segtool.__file__).parent / "napari" / "napari.yaml"


def _disks(shape=(64, 80), centres=((16, 20), (40, 50), (20, 60)), radius=7):
    labels = np.zeros(shape, np.uint16)
    for index, centre in enumerate(centres, start=1):
        labels[disk(centre, radius, shape=shape)] = index
    return labels


def _image(labels, seed=0):
    rng = np.random.default_rng(seed)
    return (np.where(labels > 0, 180.0, 20.0) + rng.normal(0, 5, labels.shape)).clip(0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- manifest


def test_manifest_validates_and_its_commands_import():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "segtool"
    manifest.validate_imports()  # every python_name resolves to a callable
    assert [w.display_name for w in manifest.contributions.widgets] == ["Segment with segtool"]
    assert manifest.contributions.writers[0].layer_types == ["labels"]


def test_manifest_is_declared_by_the_installed_distribution():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution("segtool")
    assert manifest.name == "segtool"
    assert {r.command for r in manifest.contributions.readers} == {"segtool.get_reader"}


# --------------------------------------------------------------------------- reader


def test_reader_opens_labels_tiff_with_pixel_size_as_scale(tmp_path):
    labels = _disks()
    path = write_labels(tmp_path / "cells_labels.tif", labels, pixel_size=(0.5, 0.25), unit="micron")
    reader = get_reader(str(path))
    assert callable(reader)
    [(data, kwargs, kind)] = reader(str(path))
    assert kind == "labels" and kwargs["name"] == "cells labels"
    np.testing.assert_array_equal(data, labels)
    assert kwargs["scale"] == (0.5, 0.25)
    assert kwargs["metadata"]["unit"] == "micron"


def test_reader_declines_what_segtool_did_not_write(tmp_path):
    other = tmp_path / "cells.tif"
    write_labels(other, _disks())
    assert get_reader(str(other)) is None
    assert get_reader(str(tmp_path / "missing_labels.tif")) is None
    assert get_reader(str(tmp_path)) is None  # a plain folder


def test_reader_opens_prob_maps_as_image_layers(tmp_path):
    maps = np.random.default_rng(0).random((4, 16, 24), dtype=np.float32)
    path = write_float(tmp_path / "cells_prob.tif", maps, pixel_size=(0.3, 0.3), unit="micron")
    layers = get_reader(str(path))(str(path))
    assert [kind for _, _, kind in layers] == ["image"] * 4
    assert [kw["name"] for _, kw, _ in layers] == [f"cells {n}" for n in prob_channel_names(4)]
    for index, (data, kwargs, _) in enumerate(layers):
        np.testing.assert_allclose(data, maps[index])
        assert kwargs["scale"] == pytest.approx((0.3, 0.3))
        assert kwargs["contrast_limits"] == (0.0, 1.0)


def test_reader_opens_ome_zarr_labels_lazily_with_scale(tmp_path):
    pytest.importorskip("zarr")
    pytest.importorskip("dask")
    from segtool.distributed.labelstore import write_labels_zarr

    labels = _disks()
    path = write_labels_zarr(tmp_path / "big.ome.zarr", labels, n_objects=3, pixel_size=(0.65, 0.65), unit="micron")
    [(data, kwargs, kind)] = get_reader(str(path))(str(path))
    assert kind == "labels" and kwargs["scale"] == (0.65, 0.65)
    assert kwargs["metadata"]["unit"] == "micrometer"
    assert hasattr(data, "compute")  # a Dask array: big stores are not read whole
    np.testing.assert_array_equal(np.asarray(data), labels)


# --------------------------------------------------------------------------- writer


def test_writer_tiff_round_trips_labels_and_scale(tmp_path):
    labels = _disks()
    [written] = napari_write_labels(str(tmp_path / "out.tif"), labels.astype(np.int32),
                                    {"scale": (0.5, 0.5), "metadata": {"unit": "micron"}})
    back = read_labels(written)
    np.testing.assert_array_equal(back.data, labels)
    assert back.data.dtype == np.uint16
    assert back.pixel_size == pytest.approx((0.5, 0.5)) and back.unit == "micron"


def test_writer_exports_rois_geojson_and_csv(tmp_path):
    import roifile

    labels = _disks()
    meta = {"scale": (1.0, 1.0), "metadata": {}}
    [rois] = napari_write_labels(str(tmp_path / "cells.zip"), labels, meta)
    assert len(roifile.roiread(rois)) == 3
    [geo] = napari_write_labels(str(tmp_path / "cells.geojson"), labels, meta)
    features = json.loads(Path(geo).read_text())
    features = features["features"] if isinstance(features, dict) else features
    assert len(features) == 3
    [table] = napari_write_labels(str(tmp_path / "cells.csv"), labels, meta)
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["label"]) for r in rows] == [1, 2, 3]
    area = float(rows[0].get("area_px", rows[0].get("area", 0)))
    assert area == np.sum(labels == 1)


def test_writer_refuses_unknown_endings_and_non_labels(tmp_path):
    with pytest.raises(InputError, match="segtool writes"):
        napari_write_labels(str(tmp_path / "cells.png"), _disks(), {})
    with pytest.raises(InputError, match=r"cells\.tif: label image has dtype float32; expected integer labels$"):
        napari_write_labels(str(tmp_path / "cells.tif"), np.zeros((4, 4), np.float32), {})
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- the widget's computation


def test_segment_with_baseline_finds_the_disks_and_reports_progress():
    labels = _disks()
    seen = []
    found = segment(_image(labels), SegmentOptions(method="baseline", min_size=10), on_progress=lambda d, t: seen.append((d, t)))
    assert found.max() == 3
    assert seen[-1] == (1, 1)
    for index in (1, 2, 3):
        overlap = np.bincount(found[labels == index]).argmax()
        assert overlap > 0 and np.mean(found[labels == index] == overlap) > 0.9


def test_segment_with_unet_uses_the_shipped_model_and_reports_tiles():
    labels = _disks(shape=(96, 96), centres=((30, 30), (60, 70)), radius=9)
    seen = []
    found = segment(_image(labels), SegmentOptions(method="U-Net"), on_progress=lambda d, t: seen.append((d, t)))
    assert found.shape == labels.shape and found.max() == 2
    assert seen and seen[-1][0] == seen[-1][1]


def test_image_plane_keeps_or_averages_colour_and_picks_the_plane_of_a_colour_stack():
    rgb = np.zeros((2, 4, 5, 3), np.uint8)  # two RGB planes: (T, Y, X, colour)
    rgb[1, ..., 0], rgb[1, ..., 1], rgb[1, ..., 2] = 30, 60, 90
    kept = image_plane(rgb, rgb=True, keep_colour=True, current_step=(1, 0, 0))
    assert kept.shape == (3, 4, 5) and kept.dtype == np.uint8
    assert [int(kept[c, 0, 0]) for c in range(3)] == [30, 60, 90]
    grey = image_plane(rgb, rgb=True, current_step=(1, 0, 0))
    assert grey.shape == (4, 5) and float(grey[0, 0]) == 60.0


@pytest.mark.parametrize(("model_name", "colour"), [("nuclei_he.pt", True), ("nuclei.pt", False)])
def test_segment_gives_colour_to_a_colour_reading_model_and_grey_to_a_grey_one(monkeypatch, model_name, colour):
    import segtool.infer.predict as infer_predict

    seen = {}

    def fake_predict_image(image, model, **kwargs):
        seen["image"] = np.asarray(image)
        return infer_predict.PredictResult(labels=np.zeros(np.shape(image)[-2:], np.uint16),
                                          maps=np.zeros((3,) + np.shape(image)[-2:], np.float32), n_tiles=1,
                                          seconds=0.0)

    monkeypatch.setattr(infer_predict, "predict_image", fake_predict_image)
    planes = np.stack([np.full((16, 20), v, np.uint8) for v in (200, 100, 150)])  # R, G, B
    model = str(Path(segtool.__file__).parent / "models" / model_name)
    segment(planes, SegmentOptions(method="U-Net", model=model))
    if colour:  # the hematoxylin model reads R, G and B as given
        assert seen["image"].shape == (3, 16, 20)
        np.testing.assert_array_equal(seen["image"], planes)
    else:  # a grey model reads their average, as segtool predict reads a colour file
        assert seen["image"].shape == (16, 20)
        assert np.allclose(seen["image"], 150.0)


def test_segment_options_refuse_unknown_values():
    with pytest.raises(InputError, match="method"):
        SegmentOptions(method="magic")
    with pytest.raises(InputError, match="threshold"):
        SegmentOptions(threshold="median")
    with pytest.raises(InputError, match="precision"):
        SegmentOptions(precision="fp16")


def test_widget_precisions_are_the_clis():
    from segtool.model.precision import PRECISIONS as CLI_PRECISIONS

    assert PRECISIONS == CLI_PRECISIONS


@pytest.mark.parametrize(("options", "expected"), [
    (SegmentOptions(), ("nuclei.pt", "auto")),  # segtool predict's defaults: -m nuclei, --precision auto
    (SegmentOptions(model="nuclei-he", precision="fp32"), ("nuclei_he.pt", "fp32")),  # a shipped name, as -m takes
])
def test_segment_loads_the_model_and_precision_as_segtool_predict_does(monkeypatch, options, expected):
    import segtool.infer.network as network

    loaded = {}
    real_load = network.load_for_inference_cached

    def spy_load(path, **kwargs):
        loaded.update(name=Path(path).name, **kwargs)
        return real_load(path, **kwargs)

    monkeypatch.setattr(network, "load_for_inference_cached", spy_load)
    segment(_image(_disks()), options)
    assert (loaded["name"], loaded["precision"]) == expected
    assert loaded["device"] == "auto"


def test_segment_names_a_missing_model_file(tmp_path):
    from segtool.errors import ModelError

    with pytest.raises(ModelError, match="model file not found.*shipped models: nuclei, nuclei-he"):
        segment(_image(_disks()), SegmentOptions(model=str(tmp_path / "gone.pt")))


def test_image_plane_picks_the_displayed_plane_of_a_stack():
    stack = np.stack([np.full((5, 6), i) for i in range(3)])
    assert image_plane(stack, current_step=(2, 0, 0)).max() == 2
    with pytest.raises(InputError, match="2-D"):
        image_plane(np.zeros(5))


# --------------------------------------------------------------------------- one headless viewer


def _wait(condition, timeout=60.0):
    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + timeout
    while not condition():
        QApplication.processEvents()
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the worker")
        time.sleep(0.02)


_QT_APPS = []  # the one QApplication, referenced for the whole session: PyQt6 deletes it with its last reference


def _qt_app():
    pytest.importorskip("napari")
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    _QT_APPS[:] = [app]
    assert app.platformName() == os.environ["QT_QPA_PLATFORM"]
    return app


def test_viewer_opens_results_and_segments_in_a_worker(tmp_path):
    """A headless napari viewer (ViewerModel: the viewer without its OpenGL canvas) and the Qt widget, offscreen."""
    _qt_app()
    from napari.components import ViewerModel

    from segtool.napari.widget import SegmentWidget

    labels = _disks()
    saved = write_labels(tmp_path / "cells_labels.tif", labels, pixel_size=(0.5, 0.5), unit="micron")
    import npe2

    npe2.PluginManager.instance().discover()  # what napari does at start-up: finds segtool's manifest entry point
    viewer = ViewerModel()
    opened = viewer.open(str(saved), plugin="segtool")  # through the npe2 manifest's reader
    assert opened[0].__class__.__name__ == "Labels" and tuple(opened[0].scale) == (0.5, 0.5)
    viewer.add_image(_image(labels), name="cells", scale=(0.5, 0.5))
    widget = SegmentWidget(viewer)
    try:
        assert [layer.name for layer in widget.image_layer.choices] == ["cells"]  # image layers only
        widget.image_layer.value = viewer.layers["cells"]
        widget.method.value = "baseline"
        assert widget.options().model is None  # the baseline runs without a model
        assert widget.model.native.isHidden() and not widget.threshold.native.isHidden()
        widget.min_size.value = 10
        worker = widget.run()
        assert worker is not None and not widget.run_button.enabled  # running off the GUI thread
        _wait(lambda: "cells labels" in viewer.layers)
        result = viewer.layers["cells labels"]
        assert result.data.max() == 3 and tuple(result.scale) == (0.5, 0.5)
        _wait(lambda: widget.run_button.enabled)
        assert widget.progress.value == widget.progress.max == 1
        assert widget.status.value == "3 objects in cells"
        # a U-Net model file that is not one: the error is shown in the widget, the viewer carries on
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"not a model")
        widget.method.value = "U-Net"
        widget.model.value = bad
        widget.run()
        _wait(lambda: widget.run_button.enabled and widget.status.value.startswith("error"))
        assert "not a readable segtool model file" in widget.status.value
        assert len(viewer.layers) == 3
    finally:
        widget.close()


def test_labels_tiff_opens_as_labels_with_the_reader_preference_the_readme_gives(tmp_path, monkeypatch):
    """napari asks which reader to use (segtool's or its own), unless a preference for the pattern names one."""
    _qt_app()
    import napari.plugins.utils
    import npe2
    from napari.components import ViewerModel
    from napari.errors import MultipleReaderError
    from napari.settings import NapariSettings

    npe2.PluginManager.instance().discover()
    saved = write_labels(tmp_path / "cells_labels.tif", _disks())
    viewer = ViewerModel()
    # no preference: both readers accept the file, so napari asks (drag and drop: the "Choose reader" dialog)
    with pytest.raises(MultipleReaderError) as asked:
        viewer.open(str(saved), plugin=None)
    assert {"napari", "segtool"} <= set(asked.value.available_plugins)
    # the README's one-time choice, Preferences > Plugins: pattern *_labels.tif, reader segtool (offered for it)
    offered = {r.plugin_name for r in npe2.PluginManager.instance().iter_compatible_readers(["*_labels.tif"])}
    assert "segtool" in offered
    settings = NapariSettings(config_path=None, plugins={"extension2reader": {"*_labels.tif": "segtool"}})
    monkeypatch.setattr(napari.plugins.utils, "get_settings", lambda: settings)  # not the user's settings file
    [opened] = viewer.open(str(saved), plugin=None)  # what drag and drop calls
    assert opened.__class__.__name__ == "Labels" and opened.name == "cells labels"
    other = write_labels(tmp_path / "cells.tif", _disks())
    [plain] = viewer.open(str(other), plugin=None)  # other TIFFs still go to napari's own reader
    assert plain.__class__.__name__ == "Image"


def _widget(viewer):
    from segtool.napari.widget import SegmentWidget

    return SegmentWidget(viewer)


def test_widget_model_field_says_which_model_runs_and_offers_the_shipped_ones(tmp_path):
    _qt_app()
    from napari.components import ViewerModel

    widget = _widget(ViewerModel())
    try:
        menu = widget.model_choice.native
        assert [menu.itemText(i) for i in range(menu.count())] == [
            "nuclei (shipped, default)", "nuclei-he (shipped)", "model file..."]
        assert menu.currentText() == "nuclei (shipped, default)"
        assert widget.model_info.value == "runs nuclei: fluorescence nuclei (bright on dark), grey input"
        assert widget.model.native.isHidden()  # no file field while a shipped model is chosen
        widget.model_choice.value = "nuclei-he"
        assert widget.model_info.value.startswith("runs nuclei-he: nuclei in H&E")
        assert widget.options().model == "nuclei-he"
        widget.model_choice.value = "file"
        assert not widget.model.native.isHidden()
        assert widget.model.line_edit.value == ""  # empty, not the working folder
        assert widget.model_info.value.startswith("choose a model file")
        with pytest.raises(InputError, match="no model file chosen"):
            widget.options()
        widget.method.value = "baseline"
        assert widget.options().model is None  # the baseline runs without one
        widget.method.value = "U-Net"
        widget.model_choice.value = "nuclei"
        widget.model.value = tmp_path / "mine.pt"  # setting a file chooses it
        assert widget.model_choice.value == "file" and widget.model_info.value == "runs mine.pt"
        assert widget.options().model == str(tmp_path / "mine.pt")
    finally:
        widget.close()


def _settle(app, rounds=10):
    """Let Qt lay out a window just shown or changed (it takes a few event-loop rounds)."""
    for _ in range(rounds):
        app.processEvents()
        time.sleep(0.02)


def test_widget_long_error_wraps_instead_of_widening_the_panel(tmp_path):
    """The widget docked beside a canvas in a shown window, as napari docks it: a long error keeps the dock's width."""
    app = _qt_app()
    from napari.components import ViewerModel
    from qtpy.QtCore import QRect, Qt
    from qtpy.QtWidgets import QDockWidget, QLabel, QMainWindow

    viewer = ViewerModel()
    viewer.add_image(_image(_disks()), name="cells")
    widget = _widget(viewer)
    window = QMainWindow()
    window.setCentralWidget(QLabel("canvas"))
    window.resize(1200, 1100)  # tall enough for every line, so the check is on width
    dock = QDockWidget("Segment with segtool")
    dock.setWidget(widget)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    try:
        widget.image_layer.value = viewer.layers["cells"]
        missing = tmp_path / "folder" / ("a_long_file_name_" * 12 + "model.pt")  # no space, no "/" to break at
        widget.model.value = missing
        window.show()
        _settle(app)
        width = dock.width()
        widget.run()
        _wait(lambda: widget.run_button.enabled and widget.status.value.startswith("error"))
        _settle(app)
        assert widget.status.value.startswith(f"error: model file not found: {missing}")  # the message as given
        label = widget.status.native
        assert label.wordWrap()
        assert dock.width() == width  # unwrapped, or wrapped but sized by its text, it widened the dock to ~2000 px
        needed = label.heightForWidth(label.width())
        assert needed >= 3 * label.fontMetrics().lineSpacing()  # on several lines instead
        assert label.height() >= needed  # all of them shown
        lines = label.fontMetrics().boundingRect(QRect(0, 0, label.width(), 10**6), Qt.TextFlag.TextWordWrap,
                                                 label.text())
        assert lines.width() <= label.width()  # and none wider than the label (clipped)
    finally:
        window.close()


@pytest.mark.slow
def test_widget_labels_equal_segtool_predict_on_the_sample_images(tmp_path, sample_images):
    import tifffile
    from napari.components import ViewerModel

    from helpers import invoke

    _qt_app()
    result = invoke("predict", *sample_images, "-o", tmp_path)  # the CLI's defaults: nuclei, --precision auto
    assert result.exit_code == 0, result.output
    viewer = ViewerModel()
    widget = _widget(viewer)
    try:
        assert widget.precision.value == "auto"
        for path in sample_images:
            layer = viewer.add_image(tifffile.imread(path), name=path.stem)  # as napari's own reader opens it
            widget.image_layer.value = layer
            widget.run()
            _wait(lambda: f"{path.stem} labels" in viewer.layers and widget.run_button.enabled)
            expected = read_labels(tmp_path / f"{path.stem}_labels.tif").data
            found = viewer.layers[f"{path.stem} labels"].data
            assert expected.max() > 0
            np.testing.assert_array_equal(found, expected, err_msg=path.name)
    finally:
        widget.close()
