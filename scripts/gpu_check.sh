#!/usr/bin/env bash
# GPU check: one command on a bare H100/H200 machine, with the wheels of scripts/gpu_wheels.sh
# carried in .whl/ (through the device tool: carry [".whl"]). It keeps to a budget of
# GPU_CHECK_BUDGET_S seconds (default 480): each stage gets at most what is left, so the summary
# always prints. GPU_CHECK_SMOKE=1 runs every stage at toy sizes, on whatever device there is, to
# check the script itself before device time is spent on it.
#
# Stages, most valuable first (run directories stay in /tmp; $OUT gets the log and summary.md):
#   cuda_tests  the tests that need a CUDA device (pytest)
#   vatt_z0     VATT-Base, ZeRO-0 (built as ZeRO-1: DeepSpeed's BF16 optimizer), bf16, 32 x 224^2, 3.2 s audio
#   dino_z0     DINO ViT-B/16 on frames, ZeRO-0, 2 x 224^2 global + 8 x 96^2 local crops
#   vatt_z2     VATT-Base at ZeRO-2
#   nb_batch / nb_cached / nb_accum   GradCache at equal negatives (issue 21): global batch 64 as one
#               micro-batch, as 8 cached micro-batches of 8, and as 8 plain micro-batches of 8;
#               step time and torch.cuda.max_memory_allocated
#   gns_off / gns_on   the gradient-noise scale's cost (issue 22): VATT-Base, 4 micro-steps,
#               gns.every_steps=2 against 0, adjacent-step pairs as `scaling bench gns` pairs them
#   bench       `scaling bench backbone droptoken` (side by side with timm, medians)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu_check_out}; work=/tmp/gpu_check; mkdir -p "$out"; rm -rf "$work"; mkdir -p "$work"
exec > >(tee "$out/gpu_check.log") 2>&1
start=$(date +%s); budget=${GPU_CHECK_BUDGET_S:-480}; smoke=${GPU_CHECK_SMOKE:-0}
if [ -d .whl ] && [ "$smoke" != 1 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
py=${PYTHON:-python3}
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$py -c "import torch, importlib.metadata as m; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', m.version('deepspeed'), torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

left() { echo $(( budget - ($(date +%s) - start) )); }
limit() {  # seconds for a stage: at most $1, at most what the budget has left (0: skip)
  local l; l=$(left); [ "$l" -lt 15 ] && { echo 0; return; }; [ "$l" -lt "$1" ] && echo "$l" || echo "$1"
}

if [ "$smoke" = 1 ]; then
  common=(size=nano precision=bf16 steps=6 log_every=1 eval.random_init=false eval.linear_probe=false
          data.train_size=64 data.eval_size=16 data.num_workers=0)
  vatt=(method=vatt data.frames=4 data.resolution=32 data.audio_samples=1024 global_batch=8 micro_batch=8)
  dino=(method=dino dino.input=image dino.patch_size=8 dino.local_resolution=16 data.frames=4 data.resolution=32
        global_batch=8 micro_batch=8)
  nb=(method=vatt size=nano data.frames=4 data.resolution=32 data.audio_samples=1024 global_batch=16)
  nb_batch=16; nb_micro=2; gns_micro=2; gns_steps=8
else
  common=(size=base precision=bf16 steps=40 log_every=1 eval.random_init=false eval.linear_probe=false
          data.train_size=1536 data.eval_size=128 data.num_workers=12)
  vatt=(method=vatt data.frames=32 data.resolution=224 data.audio_samples=153600 global_batch=32 micro_batch=32)
  dino=(method=dino dino.input=image dino.patch_size=16 dino.local_resolution=96 data.frames=4 data.resolution=224
        global_batch=64 micro_batch=64)
  nb=(method=vatt size=base data.frames=16 data.resolution=224 data.audio_samples=76800 global_batch=64)
  nb_batch=64; nb_micro=8; gns_micro=8; gns_steps=24
fi

run() {  # name, seconds, overrides...
  local name=$1 secs; secs=$(limit "$2"); shift 2
  if [ "$secs" = 0 ]; then echo "=== $name: skipped, the budget is spent"; return; fi
  echo "=== $name ($secs s at most, $(left) s left): $*"
  timeout "$secs" $py -m scaling.cli train "${common[@]}" "$@" --run-dir "$work/$name" > "$work/$name.log" 2>&1 \
    || { echo "=== $name: exit $?"; tail -25 "$work/$name.log"; }
}

secs=$(limit 60)
echo "=== cuda_tests ($secs s at most)"
timeout "$secs" $py -m pytest -q -p no:cacheprovider -o addopts="" tests/data/test_augment.py -k cuda \
  || echo "=== cuda_tests: exit $?"

run vatt_z0 100 "${vatt[@]}" zero_stage=0
run dino_z0 90 "${dino[@]}" zero_stage=0
run nb_batch 60 "${nb[@]}" steps=12 micro_batch=$nb_batch
run nb_cached 60 "${nb[@]}" steps=12 micro_batch=$nb_micro vatt.negatives=cached
run nb_accum 60 "${nb[@]}" steps=12 micro_batch=$nb_micro
run gns_off 60 "${vatt[@]}" zero_stage=0 steps=$gns_steps micro_batch=$gns_micro gns.every_steps=0
run gns_on 60 "${vatt[@]}" zero_stage=0 steps=$gns_steps micro_batch=$gns_micro gns.every_steps=2
run vatt_z2 70 "${vatt[@]}" zero_stage=2 steps=24

$py - "$work" "$out/summary.md" <<'PY'
import json, statistics, sys
import yaml
from pathlib import Path
from benchmarks.gns import _pairs
work, dest = Path(sys.argv[1]), Path(sys.argv[2])
def rows(run):
    f = work / run / "metrics.jsonl"
    return [json.loads(l) for l in f.read_text().splitlines() if l.strip()] if f.is_file() else []
def steps(run, skip=3):
    r = [x for x in rows(run) if "train/step_time_s" in x]
    return r[skip:] if len(r) > skip + 2 else r
def med(run, key, skip=3):
    vals = [x[key] for x in steps(run, skip) if key in x]
    return statistics.median(vals) if vals else float("nan")
def end(run):
    f = work / run / "summary.json"
    return json.loads(f.read_text()).get("end_reason", "?") if f.is_file() else "no summary"
lines = ["| run | samples/s | TFLOP/s | MFU (measured peak) | MFU (datasheet) | peak memory GB | end |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
for run in ("vatt_z0", "dino_z0", "vatt_z2"):
    lines.append(f"| {run} | {med(run, 'train/samples_per_s'):.1f} | {med(run, 'train/tflops_per_device'):.1f} | "
                 f"{med(run, 'train/mfu'):.1%} | {med(run, 'train/mfu_datasheet'):.1%} | "
                 f"{max((x.get('train/memory_gb', 0) for x in steps(run)), default=float('nan')):.1f} | {end(run)} |")
lines += ["", "| GradCache case | micro-batch | negatives per positive | step s | ratio to batch | "
          "peak memory GB (max_memory_allocated on a GPU) | memory ratio | end |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
base_t, base_m = med("nb_batch", "train/step_time_s"), max((x.get("train/memory_gb", 0) for x in steps("nb_batch")), default=float("nan"))
for run in ("nb_batch", "nb_cached", "nb_accum"):
    t = med(run, "train/step_time_s")
    m = max((x.get("train/memory_gb", 0) for x in steps(run)), default=float("nan"))
    neg = next((x["train/negatives_per_positive"] for x in rows(run) if "train/negatives_per_positive" in x), None)
    cfg = work / run / "config.yaml"
    mb = yaml.safe_load(cfg.read_text()).get("micro_batch", "?") if cfg.is_file() else "?"
    lines.append(f"| {run} | {mb} | {neg} | {t:.3f} | {t / base_t:.2f} | {m:.2f} | {m / base_m:.2f} | {end(run)} |")
t_c, t_a = med("nb_cached", "train/step_time_s"), med("nb_accum", "train/step_time_s")
lines.append(f"\ncached / accumulation (GradCache's own cost): {t_c / t_a:.2f}")
lines += ["", "| gns | pairs | even / odd step time | end |", "| --- | --- | --- | --- |"]
ratio = {}
for run in ("gns_off", "gns_on"):
    times = [x["train/step_time_s"] for x in rows(run) if "train/step_time_s" in x]
    pairs = _pairs(times, 2)
    ratio[run] = statistics.median(m / u for u, m in pairs) if pairs else float("nan")
    lines.append(f"| {run} | {len(pairs)} | {ratio[run]:.3f} | {end(run)} |")
lines.append(f"\ngns overhead of a measured step (on less off): {ratio['gns_on'] - ratio['gns_off']:+.1%}")
gns = [x for x in rows("gns_on") if "gns/b_simple" in x]
if gns:
    lines.append(f"last gns/b_simple: {gns[-1]['gns/b_simple']:.1f} at step {gns[-1].get('step')}")
text = "\n".join(lines)
print(text)
dest.write_text(text + "\n")
PY

secs=$(limit 150)
if [ "$secs" != 0 ] && [ "$smoke" != 1 ] && $py -c "import timm" 2>/dev/null; then
  echo "=== bench ($secs s at most)"
  timeout "$secs" $py -m scaling.cli bench backbone droptoken --out "$work/bench" || echo "=== bench: exit $?"
  [ -f "$work/bench/bench.md" ] && cp "$work/bench/bench.md" "$out/bench.md"
else
  echo "=== bench: skipped (smoke, no budget left, or no timm)"
fi
for run in vatt_z0 dino_z0 vatt_z2 nb_cached gns_on; do
  [ -f "$work/$run/metrics.jsonl" ] && cat "$work/$run/metrics.jsonl" >> "$out/metrics.jsonl.txt"
done
echo "=== done in $(( $(date +%s) - start )) s"
