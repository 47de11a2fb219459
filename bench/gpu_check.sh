#!/usr/bin/env bash
# GPU check for issue #22: 8192^2 end-to-end MPix/s, images/s on 60 small images, training patches/s.
#
# Two steps. Prepare once where the data is (copies ~60 test images and 60 training pairs, ~20 MB, into
# gpu_data/, which git ignores; carry that folder to the GPU machine with the working tree):
#
#     bash bench/gpu_check.sh --prep ../shared/data/dsb2018_fluo
#
# Then on the GPU machine, from the repository root (no network, nothing read outside the project;
# PYTHON defaults to python3 and must have segtool's dependencies and a CUDA torch):
#
#     bash bench/gpu_check.sh            # about 3-5 minutes on an H200-class GPU
#
# Targets from the issue on an H200-class GPU: >= 30 MPix/s, >= 30 images/s, >= 800 patches/s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=gpu_data

if [[ "${1:-}" == "--prep" ]]; then
    src=${2:?usage: bash bench/gpu_check.sh --prep DATASET_FOLDER (with test/images, train/images, train/masks)}
    rm -rf "$DATA"
    mkdir -p "$DATA/small" "$DATA/train/images" "$DATA/train/masks"
    ls "$src/test/images" | sort | head -n 60 | while read -r name; do cp "$src/test/images/$name" "$DATA/small/"; done
    ls "$src/train/images" | sort | head -n 60 | while read -r name; do
        cp "$src/train/images/$name" "$DATA/train/images/"
        cp "$src/train/masks/$name" "$DATA/train/masks/"
    done
    echo "prepared $DATA: $(ls "$DATA/small" | wc -l) small images, $(ls "$DATA/train/images" | wc -l) training pairs, $(du -sh "$DATA" | cut -f1)"
    exit 0
fi

[[ -d "$DATA/small" ]] || { echo "gpu_check: $DATA/ is missing; run 'bash bench/gpu_check.sh --prep DATASET' first" >&2; exit 2; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
"$PY" - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA {torch.cuda.is_available()}", end="")
print(f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else " (no GPU: figures below are not GPU figures)")
PY
nproc | sed 's/^/CPU cores: /'

# 1. 8192^2 mosaic of the small images, end to end (process wall: imports, load, read, network, objects, write)
"$PY" - "$DATA/small" "$OUT/mosaic_8192.tif" <<'PY'
import sys
from pathlib import Path
import tifffile
sys.path.insert(0, "bench")
from _mosaic import make_mosaic
tifffile.imwrite(sys.argv[2], make_mosaic(Path(sys.argv[1]), 8192, seed=8192))
PY
"$PY" -m segtool predict "$OUT/mosaic_8192.tif" -o "$OUT/warm" --device cuda --json --quiet > /dev/null  # warm caches
start=$(date +%s.%N)
"$PY" -m segtool predict "$OUT/mosaic_8192.tif" -o "$OUT/big" --device cuda --json --quiet > "$OUT/big.json"
end=$(date +%s.%N)
"$PY" - "$start" "$end" "$OUT/big.json" <<'PY'
import json, sys
wall = float(sys.argv[2]) - float(sys.argv[1])
record = json.loads(open(sys.argv[3]).read().splitlines()[-1])
stages = record.get("stage_seconds", {})
print(f"8192^2 end to end: {8192**2 / 1e6 / wall:.1f} MPix/s (process wall {wall:.1f} s; item {record['seconds']:.1f} s; "
      f"stages {stages}; {record['objects']} objects)  target >= 30")
PY

# 2. a folder of 60 small images (one process, one model load)
count=$(ls "$DATA/small" | wc -l)
start=$(date +%s.%N)
"$PY" -m segtool predict "$DATA/small" -o "$OUT/small" --device cuda --json --quiet > "$OUT/small.json"
end=$(date +%s.%N)
"$PY" - "$start" "$end" "$count" "$OUT/small.json" <<'PY'
import json, sys
wall, count = float(sys.argv[2]) - float(sys.argv[1]), int(sys.argv[3])
done = sum(json.loads(line)["status"] == "done" for line in open(sys.argv[4]))
print(f"{count} small images: {count / wall:.1f} images/s (process wall {wall:.1f} s, {done} done)  target >= 30")
PY

# 3. training patches/s, the shipped recipe (v11: three_class_distance, 128 px patches, batch 8, elastic), 2 epochs
workers=()
if "$PY" -m segtool train --help 2>/dev/null | grep -q -- "--workers"; then workers=(--workers auto); fi
"$PY" -m segtool train "$DATA/train" -o "$OUT/gpu_check.pt" --target three_class_distance --patch-size 128 \
    --batch-size 8 --patches-per-epoch 4096 --epochs 2 --seed 2 --val-seed 0 --elastic --device cuda --json --quiet \
    "${workers[@]}" > "$OUT/train.json"
"$PY" - "$OUT/train.json" <<'PY'
import json, sys
from segtool.model.modelfile import load_model
summary = json.loads(open(sys.argv[1]).read().splitlines()[-1])
metadata = load_model(summary["model"], device="cpu").metadata
seconds, epochs = float(metadata["training_seconds"]), int(summary["epochs_run"])
print(f"training (v11 recipe, batch 8, elastic): {epochs * 4096 / seconds:.0f} patches/s over {epochs} epochs "
      f"({seconds:.1f} s of epochs, validation included)  target >= 800")
PY
