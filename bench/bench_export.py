"""onnxruntime and TorchScript against PyTorch on this CPU: the same exported network, the same tiles.

For one model (default: the shipped nuclei model) the exported network
(:func:`segtool.interop.netexport.build_export_net`: U-Net + softmax/sigmoid,
float32) runs on the same batches of normalised tiles in four ways:

* ``pytorch``: the plain network, eager mode (the reference; what bioimage.io's
  ``pytorch_state_dict`` weights run);
* ``segtool``: segtool's own inference network (``prepare_for_inference``:
  BatchNorm folded, channels-last, fp32) + activation, what ``segtool predict``
  runs;
* ``torchscript``: the file ``model export --format torchscript`` writes (frozen);
* ``onnxruntime``: the file ``model export --format onnx`` writes, under
  onnxruntime's CPU provider (all graph optimisations).

All use ``--threads`` threads. The four alternate within each round so that
other load on the machine hits them alike; the median per-batch time over the
rounds is printed, with the ratio to ``pytorch`` measured in the same run, and
the largest difference of each output from ``pytorch``.

Run::

    python bench/bench_export.py --tile 256 --batch 4 --rounds 15 --threads 2

Needs the ``onnx`` extra. Not run by pytest.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from segtool.interop.netexport import build_export_net, export_onnx, export_torchscript
from segtool.model.heads import activate
from segtool.model.modelfile import load_model
from segtool.infer.predict import find_packaged_model
from segtool.infer.network import prepare_for_inference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, default=None)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import onnxruntime

    torch.set_num_threads(args.threads)
    model = load_model(args.model or find_packaged_model(), device="cpu")
    config = model.config
    plain = build_export_net(model)
    ours = prepare_for_inference(load_model(args.model or find_packaged_model(), device="cpu").net, precision="fp32")
    rng = np.random.default_rng(0)
    batch = rng.random((args.batch, config.in_channels, args.tile, args.tile), dtype=np.float32)
    tensor = torch.from_numpy(batch)
    with tempfile.TemporaryDirectory() as folder:
        ts_path = export_torchscript(model, Path(folder) / "net.pt")
        onnx_path = export_onnx(model, Path(folder) / "net.onnx")
        scripted = torch.jit.load(str(ts_path))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_pytorch():
            with torch.inference_mode():
                return plain(tensor).numpy()

        def run_segtool():
            with torch.inference_mode():
                return activate(ours(tensor), config.target).float().contiguous().numpy()

        def run_torchscript():
            with torch.inference_mode():
                return scripted(tensor).numpy()

        def run_onnx():
            return session.run(None, {name: batch})[0]

        runners = {"pytorch": run_pytorch, "segtool": run_segtool, "torchscript": run_torchscript,
                   "onnxruntime": run_onnx}
        reference = run_pytorch()
        differences = {key: float(np.abs(fn() - reference).max()) for key, fn in runners.items()}  # also warms up
        times: dict[str, list[float]] = {key: [] for key in runners}
        for _ in range(args.rounds):
            for key, fn in runners.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
    base = statistics.median(times["pytorch"])
    print(f"model {args.model or 'shipped nuclei.pt'}: depth {config.depth}, {config.base_channels} base channels; "
          f"batch {args.batch} x {config.in_channels} x {args.tile} x {args.tile}, {args.threads} threads, "
          f"{args.rounds} rounds; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"{'runtime':<12} {'median s/batch':>15} {'Mpx/s':>8} {'vs pytorch':>11} {'max |diff|':>11}")
    for key in runners:
        median = statistics.median(times[key])
        mpx = args.batch * args.tile * args.tile / median / 1e6
        print(f"{key:<12} {median:>15.4f} {mpx:>8.2f} {base / median:>10.2f}x {differences[key]:>11.1e}")


if __name__ == "__main__":
    main()
