"""One-run layer's commands: `scaling describe` and `scaling evaluate`.

Each layer keeps its commands beside its code (`add_commands(subparsers)`); the `scaling` entry
point (scaling.cli) assembles them.
"""
from __future__ import annotations

import argparse
import json

import scaling.data.commands
from scaling.config import RunConfig
from scaling.data.budget import PLANNED_MFU, PLANNED_PEAK_TFLOPS


def config_args(p: argparse.ArgumentParser) -> None:
    """--config FILE and dotted key=value overrides: how every command names a RunConfig."""
    p.add_argument("--config", "-c", help="RunConfig YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. size=tiny data.frames=8 dino.local_crops=4")


def cmd_describe(args: argparse.Namespace) -> int:
    from scaling.data.budget import decode_budget
    from scaling.describe import describe, human

    cfg = RunConfig.load(args.config, args.overrides)
    info = describe(cfg)
    budget = decode_budget(cfg, info["flops_per_sample"], mfu=args.mfu, peak_tflops=args.peak_tflops)
    if budget is not None:
        info["decode_budget"] = budget.as_dict()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{cfg.method} size={cfg.size} drop_rate={cfg.drop_rate}")
    print("params:")
    for part, n in info["params"].items():
        print(f"  {part:<18} {n:>14,}")
    print(f"flops/sample (fwd+bwd): {human(info['flops_per_sample'], 'FLOP')}")
    for part, n in info["flops_per_sample_by_part"].items():
        print(f"  {part:<18} {human(n, 'FLOP')}")
    print(f"total flops: {human(info['total_flops'], 'FLOP')} over {info['samples']:,} samples "
          f"({info['steps']:,} steps)")
    print("tokens per sample: " + ", ".join(f"{k}={v}" for k, v in info["tokens"].items()))
    batch = info["batch"]
    print(f"batch: {batch['formula']} (micro x accumulation x world)"
          + (f", {batch['clips_per_micro_batch']} clips x data.repeats={batch['repeats']} windows per micro-batch"
             if "repeats" in batch else "")
          + (f", negatives/positive {batch['negatives_per_positive']}" if "negatives_per_positive" in batch else ""))
    print(_memory_line(info["memory_per_gpu"], human))
    if budget is not None:
        print(budget.text())
    return 0


def _memory_line(mem: dict, human) -> str:
    states = mem["model_states_bytes"]
    stage = f"ZeRO-{mem['zero_stage']}" + (f", built as ZeRO-{mem['engine_zero_stage']}"
                                            if mem["engine_zero_stage"] != mem["zero_stage"] else "")
    return (f"memory/GPU ({stage}, {mem['precision']}): params {human(states['params'], 'B')}, "
            f"grads {human(states['grads'], 'B')}, optimizer {human(states['optimizer'], 'B')}, "
            f"activations ~{human(mem['activations_bytes'], 'B')}; total ~{human(mem['total_bytes'], 'B')}"
            + (" (activation checkpointing)" if mem["activation_checkpointing"] else ""))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from scaling.train.reevaluate import reevaluate

    print(json.dumps(reevaluate(args.run_dir), indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("describe", help="params, FLOPs, tokens, batch arithmetic and memory of a config")
    config_args(p)
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.add_argument("--mfu", type=float, default=PLANNED_MFU,
                   help=f"the planned MFU of the decode budget (file-backed data; default: {PLANNED_MFU:g})")
    p.add_argument("--peak-tflops", type=float, default=PLANNED_PEAK_TFLOPS,
                   help=f"the GPU's dense peak for it (default: {PLANNED_PEAK_TFLOPS:g}, H100 SXM bf16)")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("evaluate", help="re-evaluate a finished run from its run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_evaluate)
    scaling.data.commands.add_commands(sub)
