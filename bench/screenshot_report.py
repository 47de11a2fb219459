"""A real browser opens a ``segtool report`` page: headless Chromium screenshots ``index.html``.

Opens the page from disk (``file://``, no server), saves what the browser
drew as a PNG, and shrinks it (palette PNG, at most ``--max-kb``) so it can
sit in the docs. The size of the picture and the time Chromium took are
printed. Without Chromium (Debian: ``apt-get install chromium``) it says so
and exits 0 having checked nothing.

Run::

    python bench/screenshot_report.py report/index.html -o docs/report.png [--width 1280 --height 1000]

Not run by pytest.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image


def screenshot(page: Path, target: Path, *, width: int, height: int, max_kb: int) -> dict[str, float]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise FileNotFoundError("chromium")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "shot.png"
        start = time.perf_counter()
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={width},{height}", f"--screenshot={raw}", page.resolve().as_uri()],
                       capture_output=True, timeout=300, check=True)
        seconds = time.perf_counter() - start
        picture = Image.open(raw).convert("RGB")
    colours = 256
    while True:
        buffer = io.BytesIO()
        picture.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= max_kb * 1024 or colours <= 16:
            break
        colours //= 2
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    return {"chromium_seconds": round(seconds, 1), "png_kb": round(buffer.tell() / 1024, 1), "colours": colours,
            "size": picture.size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/report.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--max-kb", type=int, default=290)
    args = parser.parse_args()
    if not args.page.is_file():
        raise SystemExit(f"{args.page}: no such file")
    try:
        figures = screenshot(args.page, args.output, width=args.width, height=args.height, max_kb=args.max_kb)
    except FileNotFoundError:
        print("skipped: no chromium on PATH (Debian: apt-get install chromium); nothing was checked", file=sys.stderr)
        return
    print(f"{args.output}: {figures}")


if __name__ == "__main__":
    main()
