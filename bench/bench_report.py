"""``segtool report`` on 10,000 synthetic 256 x 256 results: generation time, peak memory and page size.

Makes a run on disk as ``segtool predict ... --manifest run.jsonl`` would
leave it (images, ``_labels.tif`` files, the manifest with a few failed,
empty and oversized-object results), then times ``segtool report --manifest
run.jsonl -o report/ --jobs N`` as a separate process and prints its wall
time, peak memory (largest process), the size of ``index.html``, of the
thumbnails, and of the whole report folder. With ``--browser`` it also times
headless Chromium loading ``index.html`` (the first page) and taking a
screenshot (Debian's ``chromium`` package), and reads the page's own
navigation timing (first paint, DOM ready, load event) from a copy of it
with a timing script added.

Run::

    nice python bench/bench_report.py --n 10000 --jobs 2 [--browser] [--keep DIR]

Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

import segtool


def _stamp(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy**2 + xx**2 <= radius**2


def make_run(root: Path, n: int, *, side: int = 256, seed: int = 0) -> Path:
    """``n`` images with their labels and a manifest under ``root``; returns the manifest."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "out").mkdir()
    stamps = {r: _stamp(r) for r in (6, 8, 10, 12, 40)}
    lines = []
    for i in range(n):
        name = f"img{i:05d}"
        if i % 997 == 13:  # about one in a thousand failed in the run
            lines.append({"input": f"images/{name}.tif", "status": "failed", "outputs": {},
                          "error": "cannot read image (corrupt or truncated?): not a TIFF file"})
            continue
        labels = np.zeros((side, side), np.uint16)
        count = 0 if i % 503 == 7 else int(rng.integers(10, 30))
        radius = 40 if i % 701 == 3 else int(rng.choice([6, 8, 10, 12]))
        count = 2 if radius == 40 else count
        for k in range(1, count + 1):
            y, x = rng.integers(radius, side - radius, 2)
            region = labels[y - radius:y + radius + 1, x - radius:x + radius + 1]
            region[stamps[radius] & (region == 0)] = k
        image = (rng.normal(30, 4, (side, side)) + 140 * (labels > 0)).clip(0, 255).astype(np.uint8)
        tifffile.imwrite(root / "images" / f"{name}.tif", image)
        tifffile.imwrite(root / "out" / f"{name}_labels.tif", labels, compression="zlib")
        lines.append({"input": f"images/{name}.tif", "status": "done",
                      "outputs": {"labels": f"out/{name}_labels.tif"}, "error": None,
                      "objects": int(labels.max()), "empty_reason": None, "model": "nuclei",
                      "diameter": 2.0 * radius, "scale": 1.0})
    manifest = root / "run.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


_TIMING = ("<script>window.addEventListener('load',function(){var t=performance.getEntriesByType('navigation')[0];"
           "var p=performance.getEntriesByType('paint');document.title='T '+(p.length?Math.round(p[0].startTime):-1)"
           "+' '+Math.round(t.domInteractive)+' '+Math.round(t.loadEventStart)})</script>")


def page_timing(chromium: str, page: Path) -> dict[str, int]:
    """First paint, DOM interactive and load event (ms) of ``page`` in headless Chromium."""
    timed = page.with_name(".timed.html")  # beside the page, so its relative links still work
    timed.write_text(page.read_text(encoding="utf-8").replace("</body>", _TIMING + "</body>"), encoding="utf-8")
    try:
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", timed.as_uri()],
                             capture_output=True, text=True, timeout=300, check=True).stdout
    finally:
        timed.unlink()
    paint, ready, load = dom.split("<title>T ", 1)[1].split("<", 1)[0].split()
    return {"first_paint_ms": int(paint), "dom_interactive_ms": int(ready), "load_event_ms": int(load)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--browser", action="store_true", help="also time headless Chromium opening the page")
    parser.add_argument("--keep", type=Path, default=None, help="make the run in this folder and keep it")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_report_"))
    try:
        start = time.perf_counter()
        manifest = make_run(root, args.n)
        print(f"made {args.n} results in {time.perf_counter() - start:.1f} s under {root}", file=sys.stderr)
        report = root / "report"
        command = [sys.executable, "-m", "segtool", "report", "--manifest", str(manifest), "-o", str(report),
                   "--jobs", str(args.jobs), "--overwrite", "-q"]
        # the segtool this script imports, whatever the working folder of the child
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(segtool.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
        start = time.perf_counter()
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"report failed ({done.returncode}): {done.stderr.strip()}")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        thumbs = list((report / "thumbs").iterdir())
        thumb_bytes = sum(p.stat().st_size for p in thumbs)
        figures = {
            "results": args.n,
            "jobs": args.jobs,
            "seconds": round(seconds, 1),
            "peak_rss_mb": round(peak_mb),
            "html_pages": len(list(report.glob("*.html"))),
            "index_html_mb": round((report / "index.html").stat().st_size / 1e6, 2),
            "all_html_mb": round(sum(p.stat().st_size for p in report.glob("*.html")) / 1e6, 2),
            "thumbnails": len(thumbs),
            "thumbnail_mean_kb": round(thumb_bytes / max(len(thumbs), 1) / 1e3, 2),
            "report_mb": round(folder_bytes(report) / 1e6, 1),
        }
        if args.browser:
            chromium = shutil.which("chromium") or shutil.which("chromium-browser")
            if chromium is None:
                print("no chromium on PATH: browser timing skipped", file=sys.stderr)
            else:
                start = time.perf_counter()
                subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                                f"--screenshot={root / 'shot.png'}", (report / "index.html").as_uri()],
                               capture_output=True, timeout=300, check=True)
                figures["chromium_screenshot_seconds"] = round(time.perf_counter() - start, 1)
                figures.update(page_timing(chromium, report / "index.html"))
        print(json.dumps(figures))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
