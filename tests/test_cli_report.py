"""``segtool report`` end to end: a small run with an empty, a failed and an oversized-object image."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import tifffile
from skimage.draw import disk
from typer.testing import CliRunner

from segtool.cli.application import app

runner = CliRunner()
EXTERNAL = re.compile(rb"(?i)(?:https?|ftp|wss?)://|(?:src|href)\s*=\s*[\"']?//|@import|url\(")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _scene(rng, radius, count, shape=(128, 128)):
    """An image of bright disks on noise and its labels."""
    labels = np.zeros(shape, np.uint16)
    for i in range(1, count + 1):
        centre = rng.integers(radius + 2, np.array(shape) - radius - 2)
        labels[disk(tuple(centre), radius, shape=shape)] = i
    image = (rng.normal(20, 3, shape) + 150 * (labels > 0)).clip(0, 255).astype(np.uint8)
    return image, labels


@pytest.fixture
def run(tmp_path, monkeypatch):
    """What `segtool predict images/ -o out/ --manifest run.jsonl` leaves on disk, made by hand."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "out").mkdir()
    records = []
    specs = [(f"ok{i}", 10, int(n)) for i, n in enumerate((6, 7, 5, 6, 8))]  # 20 px, as the model was trained
    specs += [("empty", 10, 0), ("huge", 45, 1)]
    for name, radius, count in specs:
        image, labels = _scene(rng, radius, count)
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", image)
        tifffile.imwrite(tmp_path / "out" / f"{name}_labels.tif", labels)
        records.append({"input": f"images/{name}.tif", "status": "done",
                        "outputs": {"labels": f"out/{name}_labels.tif"}, "error": None,
                        "objects": int(labels.max()), "empty_reason": None, "model": "nuclei",
                        "diameter": 20.5, "scale": 1.0})
    (tmp_path / "images" / "broken.tif").write_bytes(b"II*\x00garbage")
    records.insert(3, {"input": "images/broken.tif", "status": "failed", "outputs": {},
                       "error": "cannot read image (corrupt or truncated?): not a TIFF file"})
    manifest = tmp_path / "run.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path


def _cards(page: str) -> dict[str, str]:
    cards = re.findall(r"<article[^>]*>.*?</article>", page, flags=re.S)
    return {re.search(r"<h3[^>]*>(.*?)</h3>", c).group(1): c for c in cards}


def _refs(page: str) -> list[str]:
    return re.findall(r'(?:href|src)="([^"#][^"]*)"', page)


def test_report_of_a_run_flags_the_empty_failed_and_oversized_images(run):
    result = invoke("report", "--manifest", "run.jsonl", "-o", "report", "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(Path("report") / "index.html")
    page = (run / "report" / "index.html").read_text(encoding="utf-8")
    cards = _cards(page)
    names = [f"ok{i}.tif" for i in range(5)] + ["empty.tif", "huge.tif", "broken.tif"]
    assert sorted(cards) == sorted(names)
    assert "no objects" in cards["empty.tif"]
    assert "failed: cannot read image (corrupt or truncated?): not a TIFF file" in cards["broken.tif"]
    assert re.search(r"objects \d\.\dx larger than the model was trained on", cards["huge.tif"])
    for i in range(5):
        assert 'class="flags"' not in cards[f"ok{i}.tif"]
    # flagged results come first, and the page states its thresholds
    order = list(cards)
    assert set(order[:3]) == {"empty.tif", "broken.tif", "huge.tif"}
    assert "robust z-score over 3.5" in page and "over 2.5x larger or smaller" in page
    assert "estimated Ø 20.5 px" in cards["ok0.tif"] and "model nuclei" in cards["ok0.tif"]
    # every link and picture opens a file that exists; each result links its labels and image
    refs = _refs(page)
    assert refs and all((run / "report" / unquote(ref)).resolve().is_file() for ref in refs)
    assert 'href="../out/huge_labels.tif"' in cards["huge.tif"] and 'href="../images/huge.tif"' in cards["huge.tif"]
    thumbs = sorted((run / "report" / "thumbs").iterdir())
    assert len(thumbs) == 7 and all(p.stat().st_size < 20_000 for p in thumbs)
    for path in (run / "report").rglob("*"):
        if path.is_file():
            assert not EXTERNAL.search(path.read_bytes()), path


def test_report_from_label_files_and_images_with_a_z_stack(run):
    stack = np.zeros((9, 64, 64), np.uint16)
    stack[3:6, 20:30, 20:30] = 1
    tifffile.imwrite(run / "out" / "cells_labels.tif", stack, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(run / "images" / "cells.tif", (stack * 100 + 5).astype(np.uint16), imagej=True,
                     metadata={"axes": "ZYX"})
    result = invoke("report", "out", "--image", "images", "-o", "report")
    assert result.exit_code == 0, result.output
    page = (run / "report" / "index.html").read_text(encoding="utf-8")
    cards = _cards(page)
    assert len(cards) == 8  # the seven 2-D results and the stack
    stack_card = cards["cells_labels.tif"]
    assert "middle plane" in stack_card and "max projection" in stack_card and "1 objects" in stack_card
    assert "no objects" in cards["empty_labels.tif"]
    assert 'href="../images/cells.tif"' in stack_card
    assert all((run / "report" / unquote(ref)).resolve().is_file() for ref in _refs(page))


def test_report_refuses_to_replace_a_page_without_overwrite(run):
    assert invoke("report", "--manifest", "run.jsonl", "-o", "report").exit_code == 0
    before = (run / "report" / "index.html").read_bytes()
    result = invoke("report", "--manifest", "run.jsonl", "-o", "report")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1 and "index.html" in result.stderr and "--overwrite" in result.stderr
    assert (run / "report" / "index.html").read_bytes() == before
    assert invoke("report", "--manifest", "run.jsonl", "-o", "report", "--overwrite").exit_code == 0


def test_report_command_line_errors_are_one_line(run):
    (run / "bad.jsonl").write_text('{"input": "a.tif", "status": "done"}\nnot json\n')
    for args, words in [((), "--manifest"), (("--manifest", "missing.jsonl"), "missing.jsonl"),
                        (("--manifest", "bad.jsonl"), "line 2 is not JSON"),
                        (("out", "--image", "nowhere"), "nowhere")]:
        result = invoke("report", *args, "-o", "report")
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.count("\n") == 1 and words in result.stderr and "Traceback" not in result.output
    assert not (run / "report").exists()  # nothing half-written


def test_an_unreadable_label_file_fails_alone(run):
    (run / "out" / "ok1_labels.tif").write_bytes(b"II*\x00cut")
    result = invoke("report", "--manifest", "run.jsonl", "-o", "report")
    assert result.exit_code == 1
    assert "ok1_labels.tif" in result.stderr and result.stdout.strip().endswith("index.html")
    cards = _cards((run / "report" / "index.html").read_text(encoding="utf-8"))
    assert "failed: cannot read the result" in cards["ok1.tif"] and len(cards) == 8


def test_a_long_report_is_split_into_linked_pages(run):
    result = invoke("report", "--manifest", "run.jsonl", "-o", "report", "--page-size", "3")
    assert result.exit_code == 0, result.output
    pages = [run / "report" / name for name in ("index.html", "page-2.html", "page-3.html")]
    texts = [p.read_text(encoding="utf-8") for p in pages]
    cards = [_cards(t) for t in texts]
    assert [len(c) for c in cards] == [3, 3, 2]
    assert set(cards[0]) == {"empty.tif", "broken.tif", "huge.tif"}  # the flagged ones open the report
    assert sorted(n for c in cards for n in c) == sorted([f"ok{i}.tif" for i in range(5)] + ["empty.tif", "huge.tif",
                                                                                            "broken.tif"])
    for text in texts:
        assert 'href="page-3.html"' in text or "<b>3</b>" in text
        assert all((run / "report" / unquote(ref)).resolve().is_file() for ref in _refs(text))
    assert not (run / "report" / "page-4.html").exists()
