#!/usr/bin/env bash
# GPU check (run on a lent H100/H200, e.g. through the device tool with `.whl` carried):
# VATT and DINO at size=base in bf16 for 50 steps on one GPU; prints samples/s, TFLOP/s and MFU;
# then `scaling bench backbone droptoken` on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
out=${OUT:-/tmp/gpu_check}; mkdir -p "$out"
common=(size=base precision=bf16 steps=50 log_every=1 global_batch=64 micro_batch=64 eval.random_init=false
        eval.linear_probe=false data.train_size=4096 data.eval_size=256 data.num_workers=12)
# VATT's geometry: 32 frames at 224 px (1568 voxel tokens), 153600 audio samples (1200 tokens).
python3 -m scaling.cli train method=vatt "${common[@]}" data.frames=32 data.resolution=224 \
  data.audio_samples=153600 micro_batch=32 --run-dir "$out/vatt"
# DINO ViT-B/16 on frames: 2 x 224 px global + 8 x 96 px local crops.
python3 -m scaling.cli train method=dino dino.input=image dino.patch_size=16 dino.local_resolution=96 \
  "${common[@]}" data.frames=4 data.resolution=224 --run-dir "$out/dino"
python3 - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
print(f"{'run':<6} {'samples/s':>10} {'TFLOP/s':>9} {'MFU':>6}")
for name in ("vatt", "dino"):
    rows = [json.loads(l) for l in (Path(sys.argv[1]) / name / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/samples_per_s" in r][10:]  # skip warm-up steps
    med = lambda k: statistics.median(r[k] for r in rows)
    print(f"{name:<6} {med('train/samples_per_s'):>10.1f} {med('train/tflops_per_device'):>9.1f} {med('train/mfu'):>6.1%}")
PY
# Benchmarks 1 and 2 on the GPU (bf16 autocast; goal ours/timm <= 0.9): side by side, medians.
if python3 -c "import timm" 2>/dev/null; then
  python3 -m scaling.cli bench backbone droptoken --out "$out/bench"
else
  echo "timm is not installed: benchmark 1 skipped (scripts/gpu_wheels.sh carries it)"
fi
