"""Benchmark 3: ZeRO memory. The bytes of parameters, gradients and optimizer state that one rank
really holds at ZeRO stages 0-3 (2 ranks, gloo on CPU), against the ZeRO paper's model-state
formulas (Rajbhandari et al. 2020) adapted to the precision.

Two ranks are started as subprocesses of this one (`python -m benchmarks.zero_memory --worker`).
Each builds, for each precision and stage in turn, the project's model (`build_model`), DeepSpeed
config (`build_ds_config` with `zero_stage` set) and engine (`build_engine`), runs two micro-steps
of one optimizer step (gradient accumulation 2) and walks the real tensors, counting each storage
once (deduplicated by `untyped_storage().data_ptr()`):

- params, after the optimizer step: the module's parameters; under ZeRO-1/2 they are views into
  DeepSpeed's flat `bit16_groups_flat` buffers (frozen parameters stay outside them); under ZeRO-3
  the rank's partition `p.ds_tensor` plus any `p.data` that is not the empty placeholder (the
  parameters under `stage3_param_persistence_threshold`, kept whole on every rank).
- grads, after the first (non-boundary) backward, i.e. what is held between micro-steps, and again
  after the boundary backward, before the step: `p.grad` / `p.grad_accum`, the ZeRO-1/2 optimizer's
  `averaged_gradients` / `grads_in_partition`, the ZeRO-3 optimizer's `grad_partitions_flat_buffer`.
- optimizer, after the step: the inner optimizer's state (AdamW's exp_avg, exp_avg_sq, step) plus
  the fp32 master partitions of the ZeRO optimizers (`single_partition_of_fp32_groups` at 1/2,
  `fp32_partitioned_groups_flat` at 3).
- anything else reachable from the ZeRO optimizer (gradient buckets for communication) is not a
  model state; it is reported in the notes.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.core import Result, check_scale

NAME = "zero_memory"
TITLE = "ZeRO memory: per-rank model states at stages 0-3 vs the ZeRO paper's formulas"
GOAL = ("per-rank bytes of params, grads and optimizer state at ZeRO stages 0-3 (2 ranks) within 10% "
        "of the ZeRO paper's formulas adapted to the precision")
TOLERANCE = 0.10
WORLD = 2
STAGES = (0, 1, 2, 3)
PRECISIONS = ("fp32", "bf16")
ACCUMULATION = 2
MiB = 2 ** 20

# The model: the project's VATT with its defaults (frozen 65,536 x 300 word embeddings included).
# full: tiny, 15.9 M trainable + 19.7 M frozen parameters; smoke: nano with a small vocabulary.
SCALE_OVERRIDES = {
    "full": ["size=tiny"],
    "smoke": ["size=nano", "data.vocab_size=1024"],
}
TIMEOUT_S = {"full": 600, "smoke": 300}  # generous: the ranks share the machine's cores
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- measuring (in a rank)
class Storages:
    """Byte counts of tensors by category, each storage counted once across all categories."""

    def __init__(self):
        self.seen: dict[int, str] = {}
        self.bytes: dict[str, int] = {}

    def add(self, category: str, tensor) -> None:
        import torch

        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or ptr in self.seen:
            return
        self.seen[ptr] = category
        self.bytes[category] = self.bytes.get(category, 0) + nbytes

    def add_all(self, category: str, obj, depth: int = 0) -> None:
        """Every tensor in a (nested) list / tuple / dict."""
        if depth > 6 or obj is None:
            return
        if isinstance(obj, dict):
            for v in obj.values():
                self.add_all(category, v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                self.add_all(category, v, depth + 1)
        else:
            self.add(category, obj)

    def sweep(self, category: str, root, depth: int = 0, visited: set[int] | None = None) -> None:
        """Every tensor reachable from a DeepSpeed / torch.optim object through attributes and
        containers (not through nn.Modules: the parameters are counted on their own)."""
        import torch

        visited = set() if visited is None else visited
        if depth > 8 or id(root) in visited:
            return
        visited.add(id(root))
        if isinstance(root, torch.Tensor):
            self.add(category, root)
            if root.is_leaf:
                self.add(category, root.grad)
            return
        if isinstance(root, torch.nn.Module):
            return
        if isinstance(root, dict):
            for v in list(root.values()):
                self.sweep(category, v, depth + 1, visited)
        elif isinstance(root, (list, tuple, set)):
            for v in list(root):
                self.sweep(category, v, depth + 1, visited)
        elif type(root).__module__.startswith(("deepspeed", "torch.optim")) and hasattr(root, "__dict__"):
            for v in list(vars(root).values()):
                self.sweep(category, v, depth + 1, visited)


def _wrapper(engine):
    """DeepSpeed's optimizer around ours (ZeRO-1/2, ZeRO-3, or the bf16 / fp16 wrappers), if any."""
    opt = engine.optimizer
    return opt if type(opt).__module__.startswith("deepspeed.") else None


def _inner(engine):
    wrapper = _wrapper(engine)
    return wrapper.optimizer if wrapper is not None else engine.optimizer


# Where DeepSpeed's wrappers keep gradients (stage 1/2: DeepSpeedZeroOptimizer; 3: ..._Stage3;
# bf16 without ZeRO: BF16_Optimizer), flat buffers first so the name of a storage is the owner's.
GRAD_ATTRS = ("grad_partitions_flat_buffer", "grads_in_partition", "fp32_groups_gradients_flat",
              "all_grad_tensors", "averaged_gradients", "_DeepSpeedZeroOptimizer_Stage3__param_id_to_grad_partition")


MASTER_ATTRS = ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat", "fp32_groups_flat",
                "fp32_groups_flat_partition")


def _params(s: Storages, engine) -> None:
    for p in engine.module.parameters():
        if hasattr(p, "ds_tensor"):                       # ZeRO-3: the partition, and whole copies if any
            s.add("params.partition", p.ds_tensor)
            if p.data.numel():
                s.add("params.whole", p.data)
        else:
            s.add("params.module", p.data)


def _optimizer(s: Storages, engine) -> None:
    """What the inner (torch) optimizer updates, unless that is the module's params (fp32 at stage
    0): DeepSpeed's fp32 master copies; then its state (AdamW's exp_avg, exp_avg_sq, step). ZeRO-3
    puts its masters into the inner optimizer's param_groups only during its step, so they are
    also taken from the wrapper by name."""
    wrapper, inner = _wrapper(engine), _inner(engine)
    if wrapper is not None:
        for attr in MASTER_ATTRS:
            s.add_all("optimizer.fp32_master", getattr(wrapper, attr, None))
    for group in inner.param_groups:
        s.add_all("optimizer.fp32_master", group["params"])
    for state in inner.state.values():
        s.add_all("optimizer.adam_state", state)


def _grads(s: Storages, engine) -> None:
    for p in engine.module.parameters():
        s.add("grads.p.grad", p.grad)
        s.add("grads.p.grad_accum", getattr(p, "grad_accum", None))
    wrapper = _wrapper(engine)
    if wrapper is not None:
        for attr in GRAD_ATTRS:
            s.add_all(f"grads.{attr.split('__')[-1]}", getattr(wrapper, attr, None))
    for group in _inner(engine).param_groups:
        for p in group["params"]:
            s.add("grads.fp32_master.grad", p.grad)


def _other(s: Storages, engine) -> None:
    """The rest of what DeepSpeed's optimizer holds, by its attribute (communication buckets)."""
    wrapper = _wrapper(engine)
    if wrapper is not None:
        visited: set[int] = set()
        for name, value in list(vars(wrapper).items()):
            s.sweep(f"buffers.{name}", value, visited=visited)


def snapshot(engine) -> dict[str, int]:
    """Bytes by category: params and optimizer counted first, so grads and buffers are the rest."""
    s = Storages()
    _params(s, engine)
    _optimizer(s, engine)
    _grads(s, engine)
    _other(s, engine)
    return s.bytes


def _batch(cfg, dtype):
    import torch

    d, b = cfg.data, cfg.micro_batch
    g = torch.Generator().manual_seed(0)
    return (torch.rand(b, 3, d.frames, d.resolution, d.resolution, generator=g).to(dtype),
            torch.rand(b, d.audio_samples, generator=g).to(dtype),
            torch.randint(1, d.vocab_size, (b, d.captions, d.max_words), generator=g))


def measure(precision: str, stage: int, overrides: list[str], world: int) -> dict[str, Any]:
    """One engine: two micro-steps and one optimizer step; the bytes this rank holds."""
    import torch

    from scaling.config import RunConfig
    from scaling.losses import mil_nce_loss, nce_loss
    from scaling.models import build_model
    from scaling.train.engine import build_ds_config, build_engine

    cfg = RunConfig.load(None, ["method=vatt", "steps=1", "micro_batch=2", f"world_size={world}",
                                f"global_batch={2 * world * ACCUMULATION}", f"precision={precision}",
                                f"zero_stage={stage}", "data.num_workers=0", *overrides])
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    counts = {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad)}
    ds_config = build_ds_config(cfg, world)
    engine, _ = build_engine(cfg, model, ds_config)
    dtype = next(engine.module.parameters()).dtype      # bf16 engines hold bf16 params (ZeRO-3: placeholders too)
    video, audio, text = _batch(cfg, dtype)
    out: dict[str, Any] = {"trainable": counts["trainable"], "frozen": counts["frozen"],
                           "optimizer_class": type(engine.optimizer).__name__, "dtype": str(dtype)}
    grads = []
    for _ in range(ACCUMULATION):
        # VATT's loss (NCE + MIL-NCE) on the model's outputs; the clips are cast to the engine's
        # dtype (the project's objective feeds fp32 clips, which only fp32 engines accept).
        o = engine(video, audio, text)
        loss = nce_loss(o["video_va"].float(), o["audio_va"].float()) + \
            mil_nce_loss(o["video_vt"].float(), o["text_vt"].float())
        engine.backward(loss)
        grads.append(snapshot(engine))
        engine.step()
        del o, loss
    out["after_backward"] = grads            # [between micro-steps, at the boundary before the step]
    out["after_step"] = snapshot(engine)
    if hasattr(engine, "destroy"):
        engine.destroy()
    del engine, model
    gc.collect()
    return out


def worker(scale: str, out_path: Path, precisions: list[str]) -> None:
    import torch

    from scaling.distributed import barrier
    from scaling.train.engine import joined_process_group

    torch.set_num_threads(1)
    with joined_process_group() as (rank, world):
        results = {}
        for precision in precisions:
            for stage in STAGES:
                t0 = time.perf_counter()
                results[f"{precision}/{stage}"] = measure(precision, stage, SCALE_OVERRIDES[scale], world)
                results[f"{precision}/{stage}"]["seconds"] = time.perf_counter() - t0
                print(f"[zero_memory] rank {rank}: {precision} stage {stage}: {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr, flush=True)
                barrier()
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rank": rank, "world": world, "results": results}))
        os.replace(tmp, out_path)


# ----------------------------------------------------------------------------- launching (the parent)
def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def launch(scale: str, precisions: list[str], timeout: float, world: int = WORLD) -> list[dict]:
    """Start `world` ranks of the worker; their JSON results, rank by rank. A rank that fails, or
    a run past `timeout` seconds, stops every rank and raises with the stderr tail."""
    from scaling.train.engine import free_port

    with tempfile.TemporaryDirectory(prefix="zero_memory_") as tmp:
        tmp = Path(tmp)
        port = str(free_port())
        procs, logs = [], []
        for rank in range(world):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                   "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                   "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
                       [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
            log = tmp / f"rank{rank}.log"
            logs.append(log)
            with open(log, "wb") as f:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.zero_memory", "--worker", "--scale", scale,
                     "--out", str(tmp / f"rank{rank}.json"), "--precisions", ",".join(precisions)],
                    env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        failure = None
        try:
            while True:
                codes = [p.poll() for p in procs]
                bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
                if bad:
                    failure = f"rank {bad[0]} exited with code {codes[bad[0]]}"
                    break
                if all(c == 0 for c in codes):
                    break
                if time.monotonic() > deadline:
                    bad = [r for r, c in enumerate(codes) if c is None]
                    failure = f"timed out after {timeout:.0f} s (rank {bad[0]} still running)"
                    break
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            for p in procs:
                p.wait()
        if failure:
            raise RuntimeError(f"zero_memory worker: {failure}; its output ends with:\n{_tail(logs[bad[0]])}")
        return [json.loads((tmp / f"rank{rank}.json").read_text()) for rank in range(world)]


# ----------------------------------------------------------------------------- the table
def _where(state: str, cats: dict[str, int], optimizer_class: str) -> str:
    """The storages behind a measured number, e.g. 'p.ds_tensor 4.8 + p.data (whole) 5.4'."""
    names = {"params.module": "p.data", "params.partition": "p.ds_tensor", "params.whole": "whole p.data",
             "optimizer.fp32_master": "fp32 master", "optimizer.adam_state": "Adam m, v"}
    parts = [f"{names.get(k, k.split('.', 1)[1])} {v / MiB:.1f}" for k, v in cats.items()
             if k.startswith(state + ".") and v]
    text = " + ".join(parts) or "none"
    return f"{text} ({optimizer_class})" if state == "optimizer" else text


def _sum(cats: dict[str, int], prefix: str) -> int:
    return sum(v for k, v in cats.items() if k == prefix or k.startswith(prefix + "."))


def _measured(per_rank: list[dict]) -> dict[str, list[int]]:
    """Bytes per state, rank by rank: params and optimizer after the step, grads between micro-steps
    and at the boundary."""
    return {
        "params": [_sum(r["after_step"], "params") for r in per_rank],
        "grads": [_sum(r["after_backward"][0], "grads") for r in per_rank],
        "grads_boundary": [_sum(r["after_backward"][1], "grads") for r in per_rank],
        "optimizer": [_sum(r["after_step"], "optimizer") for r in per_rank],
    }


def _buffers(per_rank: list[dict]) -> dict[str, int]:
    """The largest bytes each non-model-state attribute held at any measured point of any rank, from 1 MiB."""
    held: dict[str, int] = {}
    for r in per_rank:
        for snap in (*r["after_backward"], r["after_step"]):
            for k, v in snap.items():
                if k.startswith("buffers."):
                    held[k[8:]] = max(held.get(k[8:], 0), v)
    return {k: v for k, v in held.items() if v >= MiB}


def _state_rows(precision: str, stage: int, per_rank: list[dict], measured: dict[str, list[int]],
                formula: dict[str, float]) -> list[dict[str, Any]]:
    first, rows = per_rank[0], []
    for state in ("params", "grads", "optimizer"):
        got = max(measured[state])
        ratio = got / formula[state] if formula[state] else float("nan")
        cats = first["after_backward"][0] if state == "grads" else first["after_step"]
        row = {"precision": precision, "stage": stage, "state": state,
               "measured MiB": got / MiB, "formula MiB": formula[state] / MiB, "ratio": ratio,
               "within 10%": abs(ratio - 1) <= TOLERANCE,
               "where (rank 0, MiB)": _where(state, cats, first["optimizer_class"])}
        if state == "grads":
            row["grads at boundary MiB"] = max(measured["grads_boundary"]) / MiB
        rows.append(row)
    return rows


def table(ranks: list[dict], precisions: list[str]) -> tuple[list[dict], list[str]]:
    """The rows, and the notes computed from them (what they mean is in BENCHMARKS.md, "How the
    benchmarks measure")."""
    from scaling.describe import engine_zero_stage, model_state_bytes

    rows, buffers, persistent = [], [], []
    spread = (0.0, "")
    for precision in precisions:
        for stage in STAGES:
            per_rank = [r["results"][f"{precision}/{stage}"] for r in ranks]
            first = per_rank[0]
            # The paper's formulas adapted to the precision, as `scaling describe` reports them, at
            # the stage the engine is built with (half precision at stage 0 runs stage 1).
            formula = model_state_bytes(first["trainable"], first["frozen"], engine_zero_stage(stage, precision),
                                        len(ranks), precision)
            measured = _measured(per_rank)
            for state, values in measured.items():
                if max(values) and (max(values) - min(values)) / max(values) > spread[0]:
                    spread = ((max(values) - min(values)) / max(values), f"{precision} stage {stage} {state}")
            big = _buffers(per_rank)
            if big:
                buffers.append(f"{precision} stage {stage}: "
                               + ", ".join(f"{k} {v / MiB:.1f} MiB" for k, v in big.items()))
            if stage == 3:
                whole = max(r["after_step"].get("params.whole", 0) for r in per_rank)
                persistent.append(f"{precision} {whole / MiB:.1f} MiB = {whole / formula['params']:.1%} of the formula")
            rows += _state_rows(precision, stage, per_rank, measured, formula)
    notes = [
        f"ZeRO-3 params include the whole copies of the parameters under stage3_param_persistence_threshold: "
        f"{'; '.join(persistent)}.",
        "Not model states: the gradient buckets held at the measured points: "
        + ("; ".join(buffers) or "none above 1 MiB") + ".",
        f"Measured = max over the {len(ranks)} ranks; they differ by at most {spread[0]:.1%} ({spread[1]}).",
    ]
    return rows, notes


def run(scale: str = "full") -> Result:
    scale = check_scale(scale)
    precisions = list(PRECISIONS)
    ranks = launch(scale, precisions, TIMEOUT_S[scale])
    rows, notes = table(ranks, precisions)
    first = ranks[0]["results"][f"{precisions[0]}/0"]
    model = " ".join(SCALE_OVERRIDES[scale])
    notes = [
        f"Model: VATT ({model}): {first['trainable']:,} trainable + {first['frozen']:,} frozen parameters; "
        f"{WORLD} ranks, CPU gloo; micro_batch 2, gradient accumulation {ACCUMULATION}.",
        *notes,
        "Seconds per engine (build, 2 micro-steps, step; rank 0): " + ", ".join(
            f"{k.replace('/', ' stage ')} {v['seconds']:.1f}" for k, v in ranks[0]["results"].items()) + ".",
    ]
    if scale == "smoke":
        notes.append("smoke scale: not judged against the goal (nano is narrow enough that most of its "
                     "matrices fall under ZeRO-3's persistence threshold)")
    met = all(r["within 10%"] for r in rows) if scale == "full" else None
    columns = ["precision", "stage", "state", "measured MiB", "formula MiB", "ratio", "within 10%",
               "grads at boundary MiB", "where (rank 0, MiB)"]
    return Result(name=NAME, title=TITLE, goal=GOAL, columns=columns, rows=rows, met=met, notes=notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help="run as one rank (environment from the parent)")
    parser.add_argument("--scale", default="full", choices=("full", "smoke"))
    parser.add_argument("--out", type=Path, help="the worker's JSON result")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.scale, args.out, args.precisions.split(","))
        return 0
    result = run(args.scale)
    print(json.dumps(result.to_dict(), indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
