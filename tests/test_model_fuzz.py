"""Model files from strangers: each damaged, forged or inconsistent one is refused in one line, exit 2.

A corpus of small hostile model files is generated here (truncated, random
bytes, pickles with code, path-traversal and decompression-bomb zips,
config/weights mismatches of every kind, NaN weights, unknown config keys,
other format versions). Each one goes through ``segtool predict -m``,
``segtool model info`` and ``segtool train --init``, each checked on its own,
inside one subprocess capped at 1 GiB (RLIMIT_DATA, which leaves out address
space that is only reserved, as some torch builds reserve it in bulk; RLIMIT_AS
counts it) whose peak RSS is read back with ``wait4``
(``test_memory_cap_works`` shows the cap stops a 1.5 GiB allocation). The
issue's own file and the zip bomb also go through a real ``python -m segtool``
process each; seeded mutants of a good ``.pt`` and package are loaded in-process.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from segtool.model.config import UNetConfig
from segtool.model.model import UNet

GIB = 2**30
ROOT = Path(__file__).resolve().parents[1]
CONFIG = UNetConfig(depth=2, base_channels=4, patch_size=32, target="three_class_distance", postprocess={"min_size": 5})


class _Shell:
    """Pickles to a call of ``os.system``: what a hostile pickle does when it is unpickled."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _state(config: UNetConfig = CONFIG) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return UNet(config).state_dict()


def _payload(config: UNetConfig | dict = CONFIG, state=None, **changes) -> dict:
    text = json.dumps(config if isinstance(config, dict) else config.to_dict())
    payload = {"format": "segtool-unet", "format_version": 1, "config": text, "metadata": "{}",
               "state_dict": _state() if state is None else state}
    payload.update(changes)
    return payload


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _package(path: Path, config: dict, state, *, model_json: bytes | None = None, extra: dict | None = None,
             version: int = 1) -> Path:
    """A package as ``segtool model export`` lays it out, reduced to what ``predict -m`` reads."""
    info = {"format": "segtool-unet-bioimageio", "format_version": version, "config": config, "metadata": {}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\nformat_version: 0.5.3\nname: fuzz\n")
        archive.writestr("segtool_model.json", model_json if model_json is not None else json.dumps(info))
        archive.writestr("weights.pt", _torch_bytes(state))
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


def _write_zip(path: Path, entries: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip written field by field: (name, data as stored, method, crc32, uncompressed size) per entry."""
    body, central = bytearray(), bytearray()
    for name, data, method, crc, size in entries:
        raw = name.encode()
        offset = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size, len(raw), 0)
        body += raw + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(data), size,
                               len(raw), 0, 0, 0, 0, 0, offset) + raw
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))
    return path


def _bomb_package(path: Path, *, chunks: int = 80) -> Path:
    """A package whose weights.pt honestly inflates to ``chunks`` x 16 MiB of zeros (1.25 GiB) from ~1.3 MB."""
    chunk = bytes(2**24)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    # after a full flush the compressor starts afresh, so every chunk of zeros deflates to the same bytes
    block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
    stream = block * chunks + deflate.flush()
    crc = 0
    for _ in range(chunks):
        crc = zlib.crc32(chunk, crc)
    info = json.dumps({"format": "segtool-unet-bioimageio", "format_version": 1, "config": CONFIG.to_dict(),
                       "metadata": {}}).encode()
    rdf = b"type: model\nformat_version: 0.5.3\n"
    return _write_zip(path, [("rdf.yaml", rdf, 0, zlib.crc32(rdf), len(rdf)),
                             ("segtool_model.json", info, 0, zlib.crc32(info), len(info)),
                             ("weights.pt", stream, 8, crc, chunks * len(chunk))])


def _rezip(source: bytes, path: Path, *, method: int = zipfile.ZIP_STORED, add: dict | None = None) -> Path:
    """A torch file's entries copied into a new zip (compressed with ``method``), plus ``add``."""
    with zipfile.ZipFile(io.BytesIO(source)) as src, zipfile.ZipFile(path, "w", compression=method) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
        for name, data in (add or {}).items():
            dst.writestr(name, data)
    return path


def _forge_size(source: bytes, path: Path, entry_suffix: str, size: int) -> Path:
    """A torch file whose central directory declares ``size`` bytes for one entry (its data unchanged)."""
    data = bytearray(source)
    with zipfile.ZipFile(io.BytesIO(source)) as archive:
        names = [i.filename for i in archive.infolist()]
    target = next(n for n in names if n.endswith(entry_suffix)).encode()
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        (name_len,) = struct.unpack("<H", data[at + 28:at + 30])
        if bytes(data[at + 46:at + 46 + name_len]) == target:
            data[at + 20:at + 28] = struct.pack("<II", size, size)
            break
        at = data.find(b"PK\x01\x02", at + 4)
    path.write_bytes(bytes(data))
    return path


def build_model_corpus(folder: Path, marker: Path) -> dict[str, str]:
    """Write the hostile model files into ``folder``; return file name -> a fragment of the expected error."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(39)
    state = _state()
    good = _torch_bytes(_payload())
    expected: dict[str, str] = {}

    def save(name: str, payload, fragment: str) -> None:
        torch.save(payload, folder / name)
        expected[name] = fragment

    def write(name: str, data: bytes, fragment: str) -> None:
        (folder / name).write_bytes(data)
        expected[name] = fragment

    # damaged and foreign bytes
    write("empty.pt", b"", "the file is empty (0 bytes)")
    write("truncated_half.pt", good[: len(good) // 2], "not a readable segtool model file")
    write("truncated_tail.pt", good[:-40], "not a readable segtool model file")
    write("random.pt", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not a readable segtool model file")
    write("random_after_zip_magic.pt", b"PK\x03\x04" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
          "not a readable segtool model file")
    write("text.pt", b"config: {depth: 2}\n", "not a readable segtool model file")
    save("not_segtool.pt", {"weights": torch.zeros(3)}, "not a segtool model file")
    # code in a pickle: a bare pickle (never unpickled) and one inside torch's zip (refused by weights_only)
    write("pickle_code.pt", pickle.dumps({"format": "segtool-unet", "x": _Shell(f"touch {marker}")}, protocol=2),
          "old-style pickle")
    save("zip_pickle_code.pt", _payload(metadata=_Shell(f"touch {marker}")), "more than plain weights")
    # forged zips
    _rezip(good, folder / "traversal.pt", add={"../../escaped.txt": b"x"})
    expected["traversal.pt"] = "unsafe entry name '../../escaped.txt'"
    _package(folder / "traversal.zip", CONFIG.to_dict(), state, extra={"/etc/cron.d/x": b"x"})
    expected["traversal.zip"] = "unsafe entry name '/etc/cron.d/x'"
    _rezip(good, folder / "deflated.pt", method=zipfile.ZIP_DEFLATED)
    expected["deflated.pt"] = "is compressed, which torch.save never does"
    _forge_size(good, folder / "forged_size.pt", "data/0", 2**31)
    expected["forged_size.pt"] = "runs past the end of the file"
    _bomb_package(folder / "bomb.zip")
    expected["bomb.zip"] = "entry weights.pt would decompress past"
    save("huge_header.pt", _payload(metadata=json.dumps({"notes": "x" * (17 * 2**20)})), "MiB header (its pickle)")
    _package(folder / "big_model_json.zip", CONFIG.to_dict(), state,
             model_json=b'{"format": "segtool-unet-bioimageio", "pad": "' + b" " * (5 * 2**20) + b'"}')
    expected["big_model_json.zip"] = "entry segtool_model.json would decompress past"
    # the config and the weights disagree
    mismatches = {
        "depth": {"depth": 3, "patch_size": 64},
        "widths": {"base_channels": 8},
        "channels": {"in_channels": 3, "channels": "rgb"},
        "target": {"target": "three_class"},
        "issue_example": {"depth": 6, "base_channels": 1024, "patch_size": 128},
        "depth8": {"depth": 8, "base_channels": 1024, "patch_size": 256},
    }
    for name, change in mismatches.items():
        config = {**CONFIG.to_dict(), **change}
        config.pop("out_channels")
        says = UNetConfig.from_dict(config)
        save(f"mismatch_{name}.pt", _payload(config),
             f"model file is inconsistent: config says depth {says.depth}, {says.base_channels} base channels, "
             f"{says.in_channels} input channel(s), {says.out_channels} outputs")
    _package(folder / "mismatch_depth.zip", {**CONFIG.to_dict(), "depth": 3, "patch_size": 64}, state)
    expected["mismatch_depth.zip"] = "model file is inconsistent: config says depth 3"
    # a config of a huge network in a package: refused before its weights are read
    _package(folder / "huge_config.zip", {**CONFIG.to_dict(), "depth": 8, "base_channels": 1024, "patch_size": 256},
             state)
    expected["huge_config.zip"] = "more than segtool loads"
    reshaped = dict(state)
    reshaped["decoders.0.reduce.weight"] = torch.zeros(8, 16, 3, 1)
    save("mismatch_one_tensor.pt", _payload(state=reshaped),
         "config says decoders.0.reduce.weight is 8x16x1x1, weights hold 8x16x3x1")
    save("extra_tensor.pt", _payload(state={**state, "encoders.0.7.weight": torch.zeros(4)}),
         "hold an extra tensor 'encoders.0.7.weight'")
    save("missing_tensor.pt", _payload(state={k: v for k, v in state.items() if k != "decoders.1.conv.4.bias"}),
         "lack decoders.1.conv.4.bias")
    save("not_a_tensor.pt", _payload(state={**state, "head.bias": [0.0, 0.0, 0.0, 0.0]}), "head.bias is not a plain")
    save("meta_tensor.pt", _payload(state={**state, "head.bias": torch.empty(4, device="meta")}),
         "head.bias is not a plain dense tensor with data")
    save("sparse_tensor.pt", _payload(state={**state, "head.bias": torch.zeros(4).to_sparse()}),
         "head.bias is not a plain dense tensor with data")
    save("int_weights.pt", _payload(state={**state, "head.bias": torch.zeros(4, dtype=torch.int32)}),
         "head.bias has dtype int32")
    save("list_state.pt", _payload(state=[1, 2, 3]), "'state_dict' is missing")
    # weights that would compute garbage
    for name, key, value in (("nan", "encoders.1.3.weight", float("nan")), ("inf", "head.bias", float("inf")),
                             ("neg_inf_running_mean", "encoders.0.1.running_mean", float("-inf"))):
        bad = {k: v.clone() for k, v in state.items()}
        bad[key].view(-1)[0] = value
        save(f"{name}.pt", _payload(state=bad), f"non-finite weights (NaN or infinity) in {key}")
    nan_package = {k: v.clone() for k, v in state.items()}
    nan_package["head.weight"].view(-1)[1] = float("nan")
    _package(folder / "nan.zip", CONFIG.to_dict(), nan_package)
    expected["nan.zip"] = "non-finite weights (NaN or infinity) in head.weight"
    negative = {k: v.clone() for k, v in state.items()}
    negative["encoders.2.4.running_var"][0] = -1.0
    save("negative_variance.pt", _payload(state=negative), "encoders.2.4.running_var holds negative variances")
    # configs this segtool does not know
    save("unknown_keys.pt", _payload({**CONFIG.to_dict(), "attention": True, "dropout": 0.1}),
         "unknown config keys: attention, dropout")
    save("config_not_json.pt", {**_payload(), "config": "{depth: 2"}, "invalid config")
    save("deep_json.pt", _payload(metadata="[" * 100_000 + "]" * 100_000), "invalid metadata")
    save("old_version.pt", _payload(format_version=0), "format version 0 is not supported")
    save("new_version.pt", _payload(format_version=2), "format version 2 is not supported")
    _package(folder / "new_version.zip", CONFIG.to_dict(), state, version=2)
    expected["new_version.zip"] = "package format version 2 is not supported"
    return expected


def _good_models(folder: Path) -> list[str]:
    torch.save(_payload(), folder / "good.pt")
    _package(folder / "good.zip", CONFIG.to_dict(), _state())
    return ["good.pt", "good.zip"]


# Runs each command on each model file in-process (CliRunner), one JSON line per run, then the peak RSS.
_DRIVER = r"""
import json, os, resource, sys
from typer.testing import CliRunner
from segtool.cli.application import app

corpus, image, data, out_root = sys.argv[1:5]
good = set(sys.argv[5:])
runner = CliRunner()
for name in sorted(os.listdir(corpus)):
    model = os.path.join(corpus, name)
    out = os.path.join(out_root, name)
    commands = {
        "predict": ["predict", image, "-m", model, "-o", out + ".predict", "--device", "cpu", "--threads", "1", "-q"],
        "info": ["model", "info", model],
        "init": ["train", data, "-o", out + ".init/m.pt", "--init", model, "--device", "cpu", "--threads", "1",
                 "--epochs", "1", "--batch-size", "2", "--patches-per-epoch", "2", "--quiet"],
    }
    for command, args in commands.items():
        if name in good and command == "init":
            continue  # training from a good parent is test_finetune's job
        result = runner.invoke(app, args)
        crash = None if result.exception is None or isinstance(result.exception, SystemExit) else repr(result.exception)
        print(json.dumps({"name": name, "command": command, "code": result.exit_code, "stdout": result.stdout,
                          "stderr": result.stderr, "crash": crash}), flush=True)
print(json.dumps({"peak": _peak_kib() * 1024}), flush=True)
"""


#: Prepended to the code a capped child runs: its peak RSS since exec, in KiB.
_PEAK_KIB = """
def _peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
"""


def run_capped(args: list[str], cwd: Path, env: dict[str, str], *, limit: int = GIB) -> tuple[int, str, str, int]:
    """Run ``python ARGS`` with its data segment capped at ``limit``; (exit code, stdout, stderr, peak RSS).

    ``ARGS`` is ``-c CODE ...`` or ``-m MODULE ...``.
    """
    out, err = cwd.parent / f".{cwd.name}.stdout", cwd.parent / f".{cwd.name}.stderr"
    if args[0] == "-m":  # python -m MODULE ARGS, as code that runs the module
        args = ["-c", f"import runpy\nrunpy.run_module({args[1]!r}, run_name='__main__', alter_sys=True)", *args[2:]]
    if args[0] != "-c":
        raise ValueError("run_capped runs `python -c CODE ...` or `python -m MODULE ...`")
    # The child caps itself and reports its own peak (VmHWM of its memory after exec): the rusage peak of a child
    # starts at this process's size at the fork (Linux keeps it across exec), over 1 GiB late in the test suite.
    hwm = cwd.parent / f".{cwd.name}.peak"
    capped = (f"import atexit, resource\nresource.setrlimit(resource.RLIMIT_DATA, ({limit}, {limit}))\n"
              f"atexit.register(lambda: open({str(hwm)!r}, 'w').write(str(_peak_kib())))\n{_PEAK_KIB}\n" + args[1])
    with open(out, "w") as fout, open(err, "w") as ferr:
        proc = subprocess.Popen([sys.executable, "-c", capped, *args[2:]], cwd=cwd, stdout=fout, stderr=ferr,
                                stdin=subprocess.DEVNULL, env=env)
        _, status, _ = os.wait4(proc.pid, 0)
    peak = int(hwm.read_text()) * 1024 if hwm.exists() else 0
    return os.waitstatus_to_exitcode(status), out.read_text(), err.read_text(), peak


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """The corpus, an image, a training set, and the empty folders the runs must leave empty."""
    root = tmp_path_factory.mktemp("model_fuzz")
    marker = root / "pwned"
    corpus = root / "corpus"
    expected = build_model_corpus(corpus, marker)
    good = _good_models(corpus)
    image = sorted((ROOT / "sample_data" / "images").glob("*.tif"))[0]
    data = root / "data"
    rng = np.random.default_rng(1)
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for index in range(2):
        labels = np.zeros((48, 48), np.uint16)
        labels[10:20, 10:20], labels[28:40, 25:37] = 1, 2
        pixels = ((labels > 0) * 120 + rng.normal(20, 5, labels.shape)).astype(np.uint8)
        tifffile.imwrite(data / "images" / f"c{index}.tif", pixels)
        tifffile.imwrite(data / "masks" / f"c{index}.tif", labels)
    folders = {name: root / name for name in ("work", "tmp", "home", "out")}
    for folder in folders.values():
        folder.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(folders["tmp"]), HOME=str(folders["home"]),
               XDG_CACHE_HOME=str(folders["home"] / ".cache"), MPLCONFIGDIR=str(folders["home"] / ".mpl"),
               SEGTOOL_BACKEND="torch")  # the control runs with good models would otherwise leave an ONNX copy
    listing = {p.name: p.stat().st_mtime_ns for p in corpus.iterdir()}
    return {"root": root, "marker": marker, "corpus": corpus, "expected": expected, "good": good, "image": image,
            "data": data, "folders": folders, "env": env, "listing": listing}


def _assert_nothing_written(setting) -> None:
    for name, folder in setting["folders"].items():
        assert sorted(p.name for p in folder.rglob("*")) == [], f"something was written in {name}/"
    assert not setting["marker"].exists(), "code from a pickle ran"
    assert {p.name: p.stat().st_mtime_ns for p in setting["corpus"].iterdir()} == setting["listing"]


def test_memory_cap_works(setting, tmp_path):
    """The cap the corpus runs under does stop a process that allocates past 1 GiB."""
    work = tmp_path / "w"
    work.mkdir()
    code, _, stderr, _ = run_capped(["-c", f"data = bytearray({3 * GIB // 2}); print(len(data))"], work,
                                    setting["env"])
    assert code != 0 and "MemoryError" in stderr


def test_model_corpus_is_refused_in_one_line(setting):
    corpus, expected, folders = setting["corpus"], setting["expected"], setting["folders"]
    code, stdout, stderr, peak = run_capped(
        ["-c", _DRIVER, str(corpus), str(setting["image"]), str(setting["data"]), str(folders["out"]),
         *setting["good"]],
        folders["work"], setting["env"])
    assert code == 0, stderr[-2000:]
    lines = [json.loads(line) for line in stdout.splitlines()]
    runs, (last,) = lines[:-1], lines[-1:]
    assert peak < GIB and last["peak"] < GIB, f"peak RSS {peak / 2**20:.0f} MiB"
    assert {r["name"] for r in runs} == set(expected) | set(setting["good"])
    problems = []
    for run in runs:
        where = f"{run['command']} {run['name']}"
        if run["crash"] is not None or "Traceback" in run["stderr"]:
            problems.append((where, run["crash"], run["stderr"][-300:]))
            continue
        if run["name"] in setting["good"]:
            if run["code"] != 0:
                problems.append((where, run["stderr"]))
            continue
        lines = run["stderr"].splitlines()
        path = corpus / run["name"]
        if (run["code"] != (1 if run["command"] == "info" else 2) or run["stdout"] or len(lines) != 1
                or not lines[0].startswith(f"segtool: error: {path}: ") or expected[run["name"]] not in lines[0]):
            problems.append((where, run["code"], run["stdout"][:100], run["stderr"]))
    assert problems == [], "\n".join(map(str, problems))
    # the good files were predicted (their labels are the only output), the bad ones wrote nothing
    written = sorted(p.relative_to(folders["out"]).parts[0] for p in folders["out"].rglob("*") if p.is_file())
    assert set(written) == {f"{name}.predict" for name in setting["good"]}, written
    for path in folders["out"].iterdir():
        if path.name.endswith(".predict"):
            path.rename(setting["root"] / path.name)
    _assert_nothing_written(setting)


@pytest.mark.parametrize("name", ["mismatch_issue_example.pt", "bomb.zip"])
def test_worst_files_in_a_real_process(setting, name):
    """As a shell sees it: exit 2, one line on stderr, nothing on stdout, under 1 GiB."""
    folders = setting["folders"]
    model = setting["corpus"] / name
    code, stdout, stderr, peak = run_capped(
        ["-m", "segtool", "predict", str(setting["image"]), "-m", str(model), "-o", str(folders["out"] / "o")],
        folders["work"], setting["env"])
    assert (code, stdout) == (2, "")
    (line,) = stderr.splitlines()
    assert line.startswith(f"segtool: error: {model}: ") and setting["expected"][name] in line
    assert peak < GIB, f"peak RSS {peak / 2**20:.0f} MiB"
    _assert_nothing_written(setting)


def _mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    """Bit flips (mostly in the zip records and the pickle), a truncation, or a run of random bytes."""
    data = bytearray(raw)
    kind = rng.integers(3)
    if kind == 0:
        for _ in range(int(rng.integers(1, 6))):
            # half of the flips in the last 2 KB: the central directory, where offsets and sizes live
            tail = len(data) - 1 - int(rng.integers(min(2048, len(data))))
            pos = int(rng.integers(len(data))) if rng.random() < 0.5 else tail
            data[pos] ^= 1 << int(rng.integers(8))
    elif kind == 1:
        data = data[: int(rng.integers(len(data)))]
    else:
        start = int(rng.integers(len(data)))
        data[start:start + 32] = rng.integers(0, 256, len(data[start:start + 32]), dtype=np.uint8).tobytes()
    return bytes(data)


def test_mutated_model_files_load_or_fail_cleanly(tmp_path):
    """Seeded mutants of a good .pt and a good package: each loads, or is refused with a one-line ModelError."""
    from segtool.errors import ModelError
    from segtool.model.modelfile import load_model

    package = _package(tmp_path / "good.zip", CONFIG.to_dict(), _state())
    sources = {".pt": _torch_bytes(_payload()), ".zip": package.read_bytes()}
    rng = np.random.default_rng(20261207)
    outcomes = {"loaded": 0, "refused": 0}
    for index in range(240):
        suffix = ".pt" if index % 2 else ".zip"
        path = tmp_path / f"m{index:03d}{suffix}"
        path.write_bytes(_mutate(sources[suffix], rng))
        try:
            load_model(path)
            outcomes["loaded"] += 1
        except ModelError as err:
            assert str(err) and "\n" not in str(err).strip()
            outcomes["refused"] += 1
        path.unlink()
    # both paths must really be exercised
    assert outcomes["loaded"] > 10 and outcomes["refused"] > 100, outcomes
