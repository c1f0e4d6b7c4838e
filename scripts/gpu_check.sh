#!/usr/bin/env bash
# GPU check: one command of under 10 minutes on a bare H100/H200 machine, with the wheels of
# scripts/gpu_wheels.sh carried in .whl/ (through the device tool: carry [".whl"]).
#
# Three bf16 runs of 40 steps on one GPU (run directories stay in /tmp; $OUT receives only each run's
# metrics.jsonl and summary.json, bench.md and the log: 8 files):
#   vatt_z0  VATT-Base, ZeRO-0 (built as ZeRO-1: DeepSpeed's BF16 optimizer), 32 x 224^2, 3.2 s audio
#   dino_z0  DINO ViT-B/16 on frames, ZeRO-0, 2 x 224^2 global + 8 x 96^2 local crops
#   vatt_z2  VATT-Base at ZeRO-2
# then prints samples/s, TFLOP/s, MFU against the measured matmul peak and against the datasheet,
# and runs `scaling bench backbone droptoken` on the GPU (side by side with timm, medians).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_check_out}; work=/tmp/gpu_check; mkdir -p "$out"; rm -rf "$work"; mkdir -p "$work"
exec > >(tee "$out/gpu_check.log") 2>&1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__, torch.cuda.get_device_name())"

common=(size=base precision=bf16 steps=40 log_every=5 eval.random_init=false eval.linear_probe=false
        data.train_size=4096 data.eval_size=128 data.num_workers=12)
vatt=(method=vatt data.frames=32 data.resolution=224 data.audio_samples=153600 global_batch=32 micro_batch=32)
dino=(method=dino dino.input=image dino.patch_size=16 dino.local_resolution=96 data.frames=4 data.resolution=224
      global_batch=64 micro_batch=64)
run() {  # name, overrides...
  local name=$1; shift
  echo "=== $name: $*"
  timeout 170 python3 -m scaling.cli train "${common[@]}" "$@" --run-dir "$work/$name" || echo "=== $name: exit $?"
  for f in metrics.jsonl summary.json; do [ -f "$work/$name/$f" ] && cp "$work/$name/$f" "$out/$name.$f"; done
}
run vatt_z0 "${vatt[@]}" zero_stage=0
run dino_z0 "${dino[@]}" zero_stage=0
run vatt_z2 "${vatt[@]}" zero_stage=2

python3 - "$work" <<'PY'
import json, statistics, sys
from pathlib import Path
keys = ("samples_per_s", "tflops_per_device", "mfu", "mfu_datasheet", "memory_gb")
print(f"{'run':<8} {'samples/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'MFU(ds)':>8} {'mem GB':>7}  end")
for run in ("vatt_z0", "dino_z0", "vatt_z2"):
    folder = Path(sys.argv[1]) / run
    if not (folder / "metrics.jsonl").is_file():
        print(f"{run:<8} (no metrics)")
        continue
    rows = [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines() if l.strip()]
    rows = [r for r in rows if "train/samples_per_s" in r and r.get("step", 0) > 10]  # past warm-up
    med = {k: statistics.median(r.get(f"train/{k}", float("nan")) for r in rows) if rows else float("nan")
           for k in keys}
    end = json.loads((folder / "summary.json").read_text()).get("end_reason") if (folder / "summary.json").is_file() else "?"
    print(f"{run:<8} {med['samples_per_s']:>10.1f} {med['tflops_per_device']:>8.1f} {med['mfu']:>6.1%} "
          f"{med['mfu_datasheet']:>8.1%} {med['memory_gb']:>7.1f}  {end}")
PY

# Benchmarks 1 and 2 on the GPU (bf16 autocast; goal ours/timm <= 0.9): side by side, medians.
if python3 -c "import timm" 2>/dev/null; then
  timeout 150 python3 -m scaling.cli bench backbone droptoken --out "$work/bench" || echo "=== bench: exit $?"
  [ -f "$work/bench/bench.md" ] && cp "$work/bench/bench.md" "$out/bench.md"
else
  echo "timm is not installed: benchmark 1 skipped (scripts/gpu_wheels.sh carries it)"
fi
