"""Export helpers: outlines that fill back to the same pixels, object tables, ROI zips, GeoJSON."""

from __future__ import annotations

import csv
import json
import zipfile

import numpy as np
import pytest
import roifile
import tifffile
from skimage.draw import disk, polygon as fill_polygon

from segtool.errors import InputError, OutputError
from segtool.export import (
    geojson_features,
    imagej_rois,
    label_polygons,
    rasterize_polygons,
    write_binary_tiff,
    write_csv,
    write_geojson,
    write_roi_zip,
    write_score_plot,
)
from segtool.io import read_labels
from segtool.measure import object_table, summary_row


def shoelace(ring) -> float:
    ring = np.asarray(ring, dtype=float)
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def fill_even_odd(rings, shape) -> np.ndarray:
    """Fill (x, y) pixel-corner rings by pixel centres with the even-odd rule (as ImageJ does)."""
    mask = np.zeros(shape, bool)
    for ring in rings:
        ring = np.asarray(ring, dtype=float)
        rr, cc = fill_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape=shape)
        part = np.zeros(shape, bool)
        part[rr, cc] = True
        mask ^= part
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return np.sum(a & b) / max(np.sum(a | b), 1)


@pytest.fixture
def tricky_labels() -> np.ndarray:
    """Touching objects, a ring with a hole (and an island of the same label in it), a two-part object,
    corner-only contacts, labels above 65535."""
    labels = np.zeros((40, 50), np.uint32)
    labels[2:8, 2:10] = 1
    labels[2:8, 10:16] = 2  # shares a border with 1
    labels[12:26, 4:18] = 3
    labels[16:22, 8:14] = 0  # hole
    labels[18:20, 10:12] = 3  # island inside the hole
    labels[30:34, 2:6] = 70_000
    labels[30:34, 20:26] = 70_000  # second part of the same object
    labels[10, 30] = labels[11, 31] = 5  # touch at a corner only
    labels[12:20, 36:44] = 6
    labels[15, 39] = 0  # one-pixel hole
    labels[14, 38] = 0
    labels[16, 40] = 0  # diagonal hole pixels pinch at corners
    return labels


def test_square_outline_is_four_corners_counter_clockwise():
    labels = np.zeros((6, 6), np.uint8)
    labels[1:4, 2:5] = 9
    polygons = label_polygons(labels)
    (outer, holes), = polygons[9]
    assert outer.tolist() == [[2, 1], [5, 1], [5, 4], [2, 4]]
    assert holes == [] and shoelace(outer) == 9.0


def test_round_trip_is_exact_on_tricky_shapes(tricky_labels):
    polygons = label_polygons(tricky_labels)
    assert sorted(polygons) == [1, 2, 3, 5, 6, 70_000]
    np.testing.assert_array_equal(rasterize_polygons(polygons, tricky_labels.shape), tricky_labels)
    # Holes and parts: the ring has one hole and the island is a second part; 70000 has two parts.
    assert [len(holes) for _, holes in polygons[3]] == [1, 0]
    assert len(polygons[70_000]) == 2 and len(polygons[5]) == 2
    assert len(polygons[6][0][1]) == 3
    for parts in polygons.values():
        for outer, holes in parts:
            assert shoelace(outer) > 0 and all(shoelace(h) < 0 for h in holes)
            for ring in (outer, *holes):  # simple rings: no vertex visited twice
                assert len({tuple(p) for p in ring.tolist()}) == len(ring)


def test_touching_objects_share_their_border_exactly(tricky_labels):
    polygons = label_polygons(tricky_labels)
    edge_1 = {tuple(p) for p in polygons[1][0][0].tolist() if p[0] == 10}
    edge_2 = {tuple(p) for p in polygons[2][0][0].tolist() if p[0] == 10}
    assert edge_1 == edge_2 == {(10, 2), (10, 8)}


def test_round_trip_on_random_labels():
    rng = np.random.default_rng(0)
    for _ in range(100):
        labels = rng.integers(0, 4, size=tuple(rng.integers(1, 14, size=2)))
        np.testing.assert_array_equal(rasterize_polygons(label_polygons(labels), labels.shape), labels)


def test_round_trip_on_real_masks(sample_masks):
    for path in sample_masks:
        labels = read_labels(path).data
        polygons = label_polygons(labels)
        assert set(polygons) == set(np.unique(labels[labels > 0]).tolist())
        back = rasterize_polygons(polygons, labels.shape)
        for label in polygons:  # the criterion: IoU > 0.9 per object; pixel edges give exactly 1
            assert iou(back == label, labels == label) == 1.0


def test_empty_and_bad_inputs():
    assert label_polygons(np.zeros((5, 5), np.uint16)) == {}
    assert geojson_features({}) == [] and imagej_rois({}) == []
    table = object_table(np.zeros((5, 5), np.uint16))
    assert "label" in table and len(table["label"]) == 0
    assert summary_row(np.zeros((5, 5)), table) == {"objects": 0, "mean_area": 0.0, "median_area": 0.0, "coverage": 0.0}
    with pytest.raises(InputError, match="2-D"):
        label_polygons(np.zeros((2, 3, 4), np.uint16))
    with pytest.raises(InputError, match="dtype"):
        label_polygons(np.zeros((3, 3), np.float32))
    with pytest.raises(InputError, match="shape"):
        object_table(np.zeros((3, 3), np.uint8), image=np.zeros((4, 4)))


def test_object_table_values_on_known_shapes():
    labels = np.zeros((20, 30), np.uint16)
    labels[2:6, 3:8] = 1  # 4 x 5 rectangle
    labels[10:17, 10:17] = 4  # 7 x 7 square
    image = np.zeros((20, 30), np.float32)
    image[labels == 1] = 2.0
    image[10:17, 10:17] = np.arange(49, dtype=np.float32).reshape(7, 7)
    table = object_table(labels, image=image)
    assert table["label"].tolist() == [1, 4]
    assert table["area"].tolist() == [20.0, 49.0]
    np.testing.assert_allclose(table["centroid_y"], [3.5, 13.0])
    np.testing.assert_allclose(table["centroid_x"], [5.0, 13.0])
    assert [table[k][0] for k in ("bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x")] == [2, 3, 6, 8]
    np.testing.assert_allclose(table["extent"], 1.0)
    np.testing.assert_allclose(table["solidity"], 1.0)
    assert table["eccentricity"][1] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(table["mean_intensity"], [2.0, 24.0])
    np.testing.assert_allclose(table["min_intensity"], [2.0, 0.0])
    np.testing.assert_allclose(table["max_intensity"], [2.0, 48.0])
    np.testing.assert_allclose(table["integrated_intensity"], [40.0, 24.0 * 49])
    assert "area_um2" not in table


def test_object_table_calibration_columns():
    labels = np.zeros((20, 20), np.uint16)
    labels[2:6, 3:8] = 3
    square = object_table(labels, pixel_size=(0.5, 0.5), unit="micron")
    assert square["area_um2"][0] == pytest.approx(20 * 0.25)
    assert square["centroid_x_um"][0] == pytest.approx(5.0 * 0.5)
    assert square["perimeter_um"][0] == pytest.approx(square["perimeter"][0] * 0.5)
    assert square["area"][0] == 20  # pixel columns stay in pixels
    stretched = object_table(labels, pixel_size=(2.0, 0.5), unit="nm")
    assert stretched["area_nm2"][0] == pytest.approx(20.0)
    assert stretched["centroid_y_nm"][0] == pytest.approx(3.5 * 2.0)
    assert "perimeter_nm" not in stretched  # lengths need square pixels


def test_summary_row():
    labels = np.zeros((10, 10), np.uint16)
    labels[0:2, 0:5] = 1  # 10 px
    labels[5:10, 5:10] = 2  # 25 px
    row = summary_row(labels, object_table(labels, pixel_size=(0.5, 0.5), unit="micron"))
    assert row["objects"] == 2 and row["mean_area"] == 17.5 and row["median_area"] == 17.5
    assert row["coverage"] == pytest.approx(0.35) and row["mean_area_um2"] == pytest.approx(17.5 / 4)


def test_roi_zip_round_trip_with_roifile(tmp_path, tricky_labels):
    polygons = label_polygons(tricky_labels)
    path = write_roi_zip(tmp_path / "x_rois.zip", imagej_rois(polygons))
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == sorted(f"{label}.roi" for label in polygons)
    rois = roifile.roiread(path)
    by_name = {roi.name: roi for roi in rois}
    assert set(by_name) == {str(label) for label in polygons}
    # One simple part: a traced polygon, like Fiji's wand. Holes or several parts: a composite (shape) ROI.
    assert by_name["1"].roitype == roifile.ROI_TYPE.TRACED and not by_name["1"].composite
    for name in ("3", "5", "6", "70000"):
        assert by_name[name].composite
    for name, roi in by_name.items():
        mask = fill_even_odd(roi.coordinates(multi=True), tricky_labels.shape)
        np.testing.assert_array_equal(mask, tricky_labels == int(name))


def test_roi_zip_of_real_mask(tmp_path, sample_masks):
    labels = read_labels(sample_masks[-1]).data
    rois = roifile.roiread(write_roi_zip(tmp_path / "r.zip", imagej_rois(label_polygons(labels))))
    assert len(rois) == len(np.unique(labels)) - 1
    for roi in rois:
        mask = fill_even_odd(roi.coordinates(multi=True), labels.shape)
        assert iou(mask, labels == int(roi.name)) > 0.9


def test_geojson_parsed_and_rasterised_back(tmp_path, tricky_labels):
    polygons = label_polygons(tricky_labels)
    table = object_table(tricky_labels)
    path = write_geojson(tmp_path / "x.geojson", geojson_features(polygons, table=table))
    document = json.loads(path.read_text())
    assert document["type"] == "FeatureCollection"
    features = {f["properties"]["name"]: f for f in document["features"]}
    assert set(features) == {str(label) for label in polygons}
    for name, feature in features.items():
        assert feature["type"] == "Feature"
        assert feature["properties"]["objectType"] == "detection"
        measurements = feature["properties"]["measurements"]
        assert measurements["label"] == int(name) and measurements["area"] == np.sum(tricky_labels == int(name))
        geometry = feature["geometry"]
        polys = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        assert geometry["type"] == ("Polygon" if len(polygons[int(name)]) == 1 else "MultiPolygon")
        mask = np.zeros(tricky_labels.shape, bool)
        for rings in polys:
            for k, ring in enumerate(rings):
                assert ring[0] == ring[-1]  # closed
                assert (shoelace(ring[:-1]) > 0) == (k == 0)  # RFC 7946: exterior CCW, holes CW
            mask |= fill_even_odd(rings, tricky_labels.shape)
        np.testing.assert_array_equal(mask, tricky_labels == int(name))
    assert len(features["3"]["geometry"]["coordinates"][0]) == 2  # ring with its hole


def test_geojson_leaves_out_non_finite_measurements():
    labels = np.zeros((5, 5), np.uint8)
    labels[1:3, 1:3] = 1
    table = {"label": np.array([1]), "area": np.array([4.0]), "weird": np.array([np.nan])}
    feature = geojson_features(label_polygons(labels), table=table)[0]
    assert feature["properties"]["measurements"] == {"label": 1.0, "area": 4.0}


def test_csv_round_trip(tmp_path):
    labels = np.zeros((20, 30), np.uint32)
    labels[2:6, 3:8] = 70_001
    labels[10:15, 10:20] = 2
    table = object_table(labels)
    path = write_csv(tmp_path / "objects.csv", table)
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(table)
    assert [int(r["label"]) for r in rows] == [2, 70_001]
    assert [float(r["area"]) for r in rows] == [50.0, 20.0]
    for row, perimeter in zip(rows, table["perimeter"]):
        assert float(row["perimeter"]) == perimeter  # full precision
    empty = write_csv(tmp_path / "empty.csv", [], columns=["a", "b"])
    assert empty.read_text().strip() == "a,b"


def test_writers_refuse_to_overwrite(tmp_path):
    labels = np.ones((4, 4), np.uint8)
    target = tmp_path / "x.csv"
    write_csv(target, object_table(labels))
    with pytest.raises(OutputError, match="exists"):
        write_csv(target, object_table(labels))
    write_csv(target, object_table(labels), overwrite=True)
    with pytest.raises(OutputError):
        write_geojson(target, [])


def test_binary_tiff(tmp_path):
    labels = np.zeros((8, 9), np.uint32)
    labels[2:5, 2:5] = 80_000
    path = write_binary_tiff(tmp_path / "b.tif", labels, pixel_size=(0.25, 0.25), unit="micron")
    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        assert tif.is_imagej and tif.imagej_metadata.get("unit") == "micron"
    assert data.dtype == np.uint8 and set(np.unique(data).tolist()) == {0, 255}
    np.testing.assert_array_equal(data > 0, labels > 0)
    assert read_labels(path).pixel_size == pytest.approx((0.25, 0.25))


def test_score_plot_is_a_png(tmp_path):
    path = write_score_plot(tmp_path / "curve.png", [0.5, 0.75], {"AP": [0.8, 0.5], "F1": [0.9, 0.6]}, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_more_than_65535_objects():
    side = 520
    labels = np.zeros((side, side), np.uint32)
    labels[::2, ::2] = np.arange(1, (side // 2) ** 2 + 1, dtype=np.uint32).reshape(side // 2, side // 2)
    assert labels.max() == 67_600
    polygons = label_polygons(labels)
    assert len(polygons) == 67_600
    assert polygons[67_600][0][0].tolist() == [[side - 2, side - 2], [side - 1, side - 2], [side - 1, side - 1], [side - 2, side - 1]]
    last = {label: polygons[label] for label in list(polygons)[-500:]}  # filling all 67,600 would take seconds
    expected = np.where(labels > 67_100, labels, 0)
    np.testing.assert_array_equal(rasterize_polygons(last, labels.shape), expected)


def test_inputs_are_not_modified():
    labels = np.zeros((30, 30), np.uint16)
    labels[disk((15, 15), 8)] = 3
    copy = labels.copy()
    label_polygons(labels)
    object_table(labels)
    np.testing.assert_array_equal(labels, copy)
