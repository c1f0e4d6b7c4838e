"""The single command line, `scaling`: one thin subcommand per user action.

Each subcommand parses, builds a RunConfig (or spec), and calls the library.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scaling.config import ConfigError, RunConfig

CONFIGS = Path(__file__).resolve().parent / "configs"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="RunConfig YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. size=tiny data.frames=8 dino.local_crops=4")


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def cmd_describe(args: argparse.Namespace) -> int:
    from scaling.describe import describe

    cfg = RunConfig.load(args.config, args.overrides)
    info = describe(cfg)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{cfg.method} size={cfg.size} drop_rate={cfg.drop_rate}")
    print("params:")
    for part, n in info["params"].items():
        print(f"  {part:<18} {n:>14,}")
    print(f"flops/sample (fwd+bwd): {_human(info['flops_per_sample'], 'FLOP')}")
    for part, n in info["flops_per_sample_by_part"].items():
        print(f"  {part:<18} {_human(n, 'FLOP')}")
    print(f"total flops: {_human(info['total_flops'], 'FLOP')} over {info['samples']:,} samples ({info['steps']:,} steps)")
    print("tokens per sample: " + ", ".join(f"{k}={v}" for k, v in info["tokens"].items()))
    print(f"batch: {info['batch']['formula']} (micro x accumulation x world)"
          + (f", negatives/positive {info['batch']['negatives_per_positive']}" if "negatives_per_positive" in info["batch"] else ""))
    mem = info["memory_per_gpu"]
    states = mem["model_states_bytes"]
    print(f"memory/GPU (ZeRO-{mem['zero_stage']}, {mem['precision']}): params {_human(states['params'], 'B')}, "
          f"grads {_human(states['grads'], 'B')}, optimizer {_human(states['optimizer'], 'B')}, "
          f"activations ~{_human(mem['activations_bytes'], 'B')}; total ~{_human(mem['total_bytes'], 'B')}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """One short run of each method on the synthetic clips (the main job until the sweep demo)."""
    from scaling.train.loop import train

    rows = []
    for method in ("vatt", "dino"):
        config = args.config or str(CONFIGS / f"demo_{method}.yaml")
        cfg = RunConfig.load(config, args.overrides)
        run_dir = Path(args.runs) / f"demo-{cfg.method}"
        print(f"[{method}] {run_dir} (watch: tensorboard --logdir {run_dir / 'tb'})")
        summary = train(cfg, run_dir)
        rows.append((method, summary))
    print(f"\n{'method':<6} {'steps':>6} {'k-NN random init':>17} {'k-NN trained':>13} {'linear trained':>15} {'wall s':>7}")
    for method, s in rows:
        print(f"{method:<6} {s['steps']:>6} {s['random_init'].get('knn_top1', float('nan')):>17.1f} "
              f"{s['final'].get('knn_top1', float('nan')):>13.1f} {s['final'].get('linear_top1', float('nan')):>15.1f} "
              f"{s['wall_s']:>7.0f}")
    return 0 if all(s.get("end_reason") == "completed" for _, s in rows) else 1


def cmd_train(args: argparse.Namespace) -> int:
    from scaling.train.launch import launch_local, resolve_run

    if args.nproc < 1:
        raise ConfigError("--nproc", f"got {args.nproc}; must be >= 1")
    cfg, run_dir = resolve_run(args.config, args.overrides, args.run_dir, args.nproc)
    print(f"run directory: {run_dir}")
    print(f"watch: tensorboard --logdir {run_dir / 'tb'}")
    if args.nproc == 1:
        from scaling.train.loop import train

        summary = train(cfg, run_dir)
        return 0 if summary.get("end_reason") == "completed" else 1
    return launch_local(cfg, run_dir, args.nproc)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from scaling.train.reevaluate import reevaluate

    print(json.dumps(reevaluate(args.run_dir), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaling", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("describe", help="params, FLOPs, tokens, batch arithmetic and memory of a config")
    _config_args(p)
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("train", help="train one RunConfig on a DeepSpeed engine into a run directory")
    _config_args(p)
    p.add_argument("--run-dir", help="run directory (default: a new folder under runs/); an existing one resumes")
    p.add_argument("--nproc", type=int, default=1, help="total number of ranks (local processes)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="re-evaluate a finished run from its run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="a short run of each method on the synthetic clips, with its random-init baseline")
    p.add_argument("--config", "-c", help="one RunConfig YAML for both methods (default: the packaged demo configs)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--runs", default="runs", help="where the demo's run directories go (default: runs/)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"scaling: invalid config: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
