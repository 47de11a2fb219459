"""Mutated TIFFs: every command either succeeds or fails with a clean error, leaving no file behind.

Valid files from sample_data are damaged a few hundred times with a fixed seed
(bit flips, truncations, rewritten header fields). Reading them and running the
baseline on them must end in a result or a SegtoolError, never another
exception, and a failed input must not leave any file in the output folder.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from segtool.tasks.baseline import BaselineTask
from segtool.tasks.baseline import BaselineOptions
from segtool.errors import SegtoolError
from segtool.io import read_labels
from segtool.outputs import OutputOptions

N_MUTANTS = 240


def _mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(raw)
    kind = rng.integers(4)
    if kind == 0:  # bit flips, mostly in the header and first IFD where they do the most damage
        for _ in range(int(rng.integers(1, 8))):
            limit = len(data) if rng.random() < 0.3 else min(len(data), 512)
            pos = int(rng.integers(limit))
            data[pos] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # truncation
        data = data[: int(rng.integers(0, len(data)))]
    elif kind == 2:  # rewrite one IFD entry's value (width, height, offsets, counts, bits...)
        byteorder = "<" if data[:2] == b"II" else ">"
        (ifd,) = struct.unpack(byteorder + "I", bytes(data[4:8]))
        if ifd + 2 <= len(data):
            (count,) = struct.unpack(byteorder + "H", bytes(data[ifd : ifd + 2]))
            entry = ifd + 2 + 12 * int(rng.integers(max(count, 1)))
            if entry + 12 <= len(data):
                value = int(rng.choice([0, 1, 3, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, int(rng.integers(2**32))]))
                data[entry + 8 : entry + 12] = struct.pack(byteorder + "I", value)
    else:  # overwrite a random run with random bytes
        start = int(rng.integers(len(data)))
        length = int(rng.integers(1, 64))
        data[start : start + length] = rng.integers(0, 256, size=len(data[start : start + length]), dtype=np.uint8).tobytes()
    return bytes(data)


@pytest.fixture(scope="module")
def sources() -> list[bytes]:
    root = Path(__file__).resolve().parents[1] / "sample_data"
    files = sorted((root / "images").glob("*.tif"))[:2] + sorted((root / "masks").glob("*.tif"))[:1]
    return [f.read_bytes() for f in files]


def test_mutated_tiffs_fail_cleanly(tmp_path, sources):
    rng = np.random.default_rng(20261123)
    out = tmp_path / "out"
    task = BaselineTask(output=OutputOptions(out, overwrite=True), options=BaselineOptions(min_size=20), save_overlay=True)
    outcomes = {"ok": 0, "error": 0}
    for i in range(N_MUTANTS):
        source = sources[i % len(sources)]
        path = tmp_path / f"m{i:04d}.tif"
        path.write_bytes(_mutate(source, rng))
        try:
            task.run(path)
            outcomes["ok"] += 1
            assert task.planned_outputs(path)["labels"].exists()
        except SegtoolError as err:
            outcomes["error"] += 1
            message = str(err)
            assert message and "\n" not in message.strip()
            leftovers = [p for p in out.glob(f"m{i:04d}*")] if out.exists() else []
            assert leftovers == [], f"failed input left files behind: {leftovers}"
        try:
            read_labels(path)
        except SegtoolError:
            pass
        path.unlink()
    assert not [p for p in out.rglob("*.part")] if out.exists() else True
    # The mutations must really exercise both paths.
    assert outcomes["error"] > N_MUTANTS // 10 and outcomes["ok"] > N_MUTANTS // 10, outcomes


# --------------------------------------------------------------------------- hostile-input corpus
#
# Inputs that real screens produce or that a damaged disk leaves behind. Each
# command is run on a folder holding all of them at once, in a subprocess whose
# address space is capped (so a regression cannot take the test machine down)
# and whose peak RSS is read back with wait4.

import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import zlib  # noqa: E402

import tifffile  # noqa: E402

GIB = 2**30
# The tile compressions tifffile decodes with imagecodecs (a core dependency of segtool).
TILE_COMPRESSIONS = ("zlib", "deflate", "lzw", "packbits", "zstd", "lzma", "jpeg", "png", "jpeg2000", "jpegxl", "jpegxr", "lerc")
_EIGHT_BIT = ("jpeg", "jpegxr")  # codecs used here on uint8 tiles


def huge_tiled_tiff(path: Path, compression: str, shape=(20000, 20000), dtype=np.uint16, tile=(1024, 1024)) -> Path:
    """A valid tiled BigTIFF of ``shape`` whose tiles all hold the same encoded zero tile (a small file)."""
    probe = path.with_name(f".{path.name}.probe.tif")
    tifffile.imwrite(probe, np.zeros(tile, dtype), tile=tile, compression=compression)
    with tifffile.TiffFile(probe) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
        tables = page.jpegtables
    encoded = probe.read_bytes()[offset : offset + count]
    probe.unlink()
    n_tiles = -(-shape[0] // tile[0]) * -(-shape[1] // tile[1])
    extra = {"jpegtables": tables} if tables else {}
    tifffile.imwrite(path, data=itertools.repeat(encoded, n_tiles), shape=shape, dtype=dtype, tile=tile,
                     compression=compression, bigtiff=True, **extra)
    return path


def set_tiff_tags(raw: bytes, values: dict[int, int]) -> bytes:
    """Rewrite SHORT/LONG values of the first IFD's tags (classic TIFF)."""
    data = bytearray(raw)
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack(order + "HH", data[entry : entry + 4])
        if tag in values:
            packed = struct.pack(order + "HH", values[tag], 0) if kind == 3 else struct.pack(order + "I", values[tag])
            data[entry + 8 : entry + 12] = packed
    return bytes(data)


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A small PNG whose IHDR (CRC fixed) declares ``width`` x ``height``."""
    from PIL import Image as PILImage

    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def jpeg_declaring(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose SOF0 segment declares ``width`` x ``height``."""
    from PIL import Image as PILImage

    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(path, format="JPEG")
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def build_corpus(folder: Path, sample: Path) -> dict[str, str]:
    """Write the hostile corpus into ``folder``; return file name -> expected status ("done"/"failed")."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    expected = {}
    # Row 1 of the issue: empty wells are results.
    yy, xx = np.mgrid[:64, :80].astype(np.float64)
    for name, image in {
        "well_constant.tif": np.full((64, 80), 300, np.uint16),
        "well_zero.tif": np.zeros((64, 80), np.uint8),
        "well_smooth.tif": (500 + 0.1 * (yy - 30) ** 2 + 0.05 * xx**2).astype(np.float32),
        "well_noise.tif": rng.normal(500 + 0.1 * (yy - 30) ** 2, 6).astype(np.float32),
        "strip_1xN.tif": rng.integers(0, 255, (1, 300), dtype=np.uint8),
        "strip_Nx1.tif": rng.integers(0, 255, (300, 1), dtype=np.uint8),
    }.items():
        tifffile.imwrite(folder / name, image)
        expected[name] = "done"
    # Row 2: huge declared sizes, one file per compression, plus the issue's 7.7 MB / 7.2 GB zlib BigTIFF.
    for compression in TILE_COMPRESSIONS:
        dtype = np.uint8 if compression in _EIGHT_BIT else np.uint16
        expected[huge_tiled_tiff(folder / f"huge_{compression}.tif", compression, dtype=dtype).name] = "failed"
    expected[huge_tiled_tiff(folder / "huge_60000_zlib.tif", "zlib", shape=(60000, 60000)).name] = "failed"
    tifffile.imwrite(folder / "huge_uncompressed.tif", shape=(60000, 60000), dtype=np.uint16, bigtiff=True)  # sparse
    expected["huge_uncompressed.tif"] = "failed"
    expected[png_declaring(folder / "huge_12000.png", 12000, 12000).name] = "failed"
    expected[png_declaring(folder / "huge_60000.png", 60000, 60000).name] = "failed"
    expected[jpeg_declaring(folder / "huge_12000.jpg", 12000, 12000).name] = "failed"
    # Row 3: a corrupt TIFF whose tags declare 65535 x 65535 (tifffile logs three complaints about it).
    small = folder / "corrupt_65535.tif"
    tifffile.imwrite(small, rng.integers(0, 255, (64, 64), dtype=np.uint8), rowsperstrip=8)
    small.write_bytes(set_tiff_tags(small.read_bytes(), {256: 65535, 257: 65535}))
    expected[small.name] = "failed"
    # Non-finite floats and a 0-byte file.
    for name, bad in (("nan.tif", np.nan), ("inf.tif", np.inf), ("neg_inf.tif", -np.inf)):
        image = rng.normal(100, 5, (40, 40)).astype(np.float32)
        image[7, 9] = bad
        tifffile.imwrite(folder / name, image)
        expected[name] = "failed"
    (folder / "empty_0_bytes.tif").write_bytes(b"")
    expected["empty_0_bytes.tif"] = "failed"
    # A real image, which must still be segmented whatever its neighbours are.
    (folder / "real.tif").write_bytes(sample.read_bytes())
    expected["real.tif"] = "done"
    return expected


def run_capped(args: list[str], cwd: Path, *, address_space: int = 6 * GIB) -> tuple[int, str, str, int]:
    """Run ``python -m segtool ARGS`` with a capped address space; (exit code, stdout, stderr, peak RSS in bytes)."""
    out, err = cwd / ".stdout", cwd / ".stderr"

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    with open(out, "w") as fout, open(err, "w") as ferr:
        proc = subprocess.Popen([sys.executable, "-m", "segtool", *args], cwd=cwd, stdout=fout, stderr=ferr,
                                stdin=subprocess.DEVNULL, preexec_fn=cap, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux; it covers the process and the children it waited for (--jobs workers).
    return proc.returncode, out.read_text(), err.read_text(), usage.ru_maxrss * 1024


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("hostile") / "plate"
    sample = sorted((Path(__file__).resolve().parents[1] / "sample_data" / "images").glob("*.tif"))[0]
    return folder, build_corpus(folder, sample)


def _check_run(code, stdout, stderr, out_dir: Path, expected: dict[str, str], *, predict_bands: bool = False):
    records = {Path(r["input"]).name: r for r in map(json.loads, stdout.splitlines())}
    assert set(records) == set(expected), "every input of the folder gets a result"
    assert code == 1  # some inputs failed, the rest were processed
    assert "Traceback" not in stderr and "tifffile" not in stderr.replace("(tifffile: ", "")
    error_lines = [line for line in stderr.splitlines() if line.startswith("segtool: error: ")]
    other_lines = [line for line in stderr.splitlines() if not line.startswith("segtool: error: ")]
    assert all(line.startswith("segtool: ") and "done" in line for line in other_lines), other_lines  # the summary
    failed = sorted(name for name, r in records.items() if r["status"] == "failed")
    assert failed == sorted(name for name, status in expected.items() if status == "failed")
    assert len(error_lines) == len(failed), "exactly one line per failed input"
    for name in failed:
        assert [line for line in error_lines if f"/{name}: " in line or f" {name}: " in line], name
    written = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert not [n for n in written if n.startswith(".") or n.endswith(".part")], "no partial output"
    for name, record in records.items():
        stem = Path(name).stem
        mine = [n for n in written if n.startswith(stem + "_") or n.startswith(stem + ".")]
        if record["status"] == "failed":
            assert mine == [], f"{name} failed but left {mine}"
        else:
            assert mine, f"{name} is done but wrote nothing"
    return records


def test_corpus_baseline(corpus, tmp_path):
    folder, expected = corpus
    out = tmp_path / "out"
    code, stdout, stderr, peak = run_capped(["baseline", str(folder), "-o", str(out), "--json", "--max-memory", "2G",
                                             "--save-background"], tmp_path)
    records = _check_run(code, stdout, stderr, out, expected)
    assert peak < GIB, f"peak RSS {peak / 2**20:.0f} MiB while refusing huge inputs"
    for name in ("well_constant.tif", "well_zero.tif", "well_smooth.tif", "well_noise.tif"):
        assert records[name]["objects"] == 0 and records[name]["empty_reason"]
        assert (out / (Path(name).stem + "_background.tif")).exists()
    assert records["real.tif"]["objects"] > 10
    for compression in TILE_COMPRESSIONS:
        error = records[f"huge_{compression}.tif"]["error"]
        assert error.startswith("image is 20000x20000") and "--max-memory" in error and "--block-size" in error
    assert "(tifffile: incorrect StripByteCounts count" in records["corrupt_65535.tif"]["error"]
    assert "65535x65535" in records["corrupt_65535.tif"]["error"]
    for name in ("nan.tif", "inf.tif", "neg_inf.tif"):
        assert "NaN or infinite" in records[name]["error"]
    assert records["empty_0_bytes.tif"]["error"] == "file is empty (0 bytes)"
    assert records["huge_12000.png"]["error"].startswith("image is 12000x12000 uint8")
    assert "decompression bomb" in records["huge_60000.png"]["error"]


def test_corpus_baseline_with_jobs(corpus, tmp_path):
    folder, expected = corpus
    out = tmp_path / "out"
    code, stdout, stderr, peak = run_capped(["baseline", str(folder), "-o", str(out), "--json", "--max-memory", "4G",
                                             "--jobs", "2"], tmp_path)
    _check_run(code, stdout, stderr, out, expected)
    assert peak < GIB


def test_corpus_predict(corpus, tmp_path):
    folder, expected = corpus
    out = tmp_path / "out"
    # --no-bands: the huge images must be refused (with bands, predict would stream them, correctly but slowly).
    code, stdout, stderr, peak = run_capped(["predict", str(folder), "-o", str(out), "--json", "--max-memory", "2G",
                                             "--no-bands", "--threads", "1"], tmp_path, address_space=12 * GIB)
    records = _check_run(code, stdout, stderr, out, expected)
    assert peak < GIB
    assert "drop --no-bands" in records["huge_60000_zlib.tif"]["error"]
    for name in ("well_constant.tif", "well_zero.tif", "well_smooth.tif", "well_noise.tif", "strip_1xN.tif", "strip_Nx1.tif"):
        assert records[name]["objects"] == 0, name


def test_corpus_measure(corpus, tmp_path):
    folder, expected = corpus
    # As label images, the float images with whole values fail (not labels), the rest as for baseline.
    files = [str(folder / name) for name in expected]
    out = tmp_path / "out"
    # 1G: measure's working memory per pixel is small, so 2G would let the 12000 x 12000 JPEG through, and a
    # truncated JPEG decodes to noise whose millions of specks make regionprops far costlier than real labels.
    code, stdout, stderr, peak = run_capped(["measure", *files, "-o", str(out), "--json", "--max-memory", "1G"], tmp_path)
    labels_expected = dict(expected)
    for name in ("well_smooth.tif", "well_noise.tif"):
        labels_expected[name] = "failed"  # fractional values: not a label image
    records = _check_run(code, stdout, stderr, out, labels_expected)
    assert peak < GIB
    assert "label image" in records["nan.tif"]["error"]


def test_default_memory_limit_refuses_the_issues_bigtiff(corpus, tmp_path):
    """Row 2 of the issue with no --max-memory: the default share of available memory refuses it."""
    folder, _ = corpus
    code, stdout, stderr, peak = run_capped(["baseline", str(folder / "huge_60000_zlib.tif"), "-o", str(tmp_path / "o")],
                                            tmp_path)
    assert code == 1 and stdout == ""
    (line,) = [x for x in stderr.splitlines() if x.startswith("segtool: error:")]
    assert "huge_60000_zlib.tif: image is 60000x60000 uint16 (6.7 GiB decoded)" in line and "--block-size" in line
    assert peak < GIB and not (tmp_path / "o").exists()


def test_corrupt_tiff_is_one_line_without_raw_tifffile_logs(corpus, tmp_path):
    """Row 3 of the issue: tifffile's complaints are folded into the one line (here the decode fails, not the guard)."""
    path = tmp_path / "corrupt_4000.tif"
    tifffile.imwrite(path, np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8), rowsperstrip=8)
    path.write_bytes(set_tiff_tags(path.read_bytes(), {256: 4000, 257: 4000}))
    code, stdout, stderr, peak = run_capped(["baseline", str(path), "-o", str(tmp_path / "o"), "-q"], tmp_path)
    assert code == 1 and stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"segtool: error: {path}: cannot read TIFF")
    assert "(tifffile: incorrect StripByteCounts count" in lines[0]
    debug = run_capped(["baseline", str(path), "-o", str(tmp_path / "o"), "--debug", "-q"], tmp_path)
    assert "segtool: debug: segtool: tifffile: <tifffile.TiffPage 0 @8> incorrect StripByteCounts" in debug[2]
    assert not (tmp_path / "o").exists()
