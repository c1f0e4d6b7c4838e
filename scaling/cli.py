"""The single command line, `scaling`: one thin subcommand per user action.

Each subcommand parses, builds a RunConfig (or spec), and calls the library.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scaling.config import ConfigError, RunConfig
from scaling.cli_study import cmd_analyze, cmd_demo, cmd_fit, cmd_jobs, cmd_sweep

CONFIGS = Path(__file__).resolve().parent / "configs"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="RunConfig YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. size=tiny data.frames=8 dino.local_crops=4")


def cmd_describe(args: argparse.Namespace) -> int:
    from scaling.describe import describe, human

    cfg = RunConfig.load(args.config, args.overrides)
    info = describe(cfg)
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
    print(f"total flops: {human(info['total_flops'], 'FLOP')} over {info['samples']:,} samples ({info['steps']:,} steps)")
    print("tokens per sample: " + ", ".join(f"{k}={v}" for k, v in info["tokens"].items()))
    print(f"batch: {info['batch']['formula']} (micro x accumulation x world)"
          + (f", negatives/positive {info['batch']['negatives_per_positive']}" if "negatives_per_positive" in info["batch"] else ""))
    mem = info["memory_per_gpu"]
    states = mem["model_states_bytes"]
    stage = f"ZeRO-{mem['zero_stage']}" + (f", built as ZeRO-{mem['engine_zero_stage']}"
                                            if mem["engine_zero_stage"] != mem["zero_stage"] else "")
    print(f"memory/GPU ({stage}, {mem['precision']}): params {human(states['params'], 'B')}, "
          f"grads {human(states['grads'], 'B')}, optimizer {human(states['optimizer'], 'B')}, "
          f"activations ~{human(mem['activations_bytes'], 'B')}; total ~{human(mem['total_bytes'], 'B')}"
          + (" (activation checkpointing)" if mem["activation_checkpointing"] else ""))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from scaling.train.launch import launch_local, resolve_run

    if args.nproc < 1:
        raise ConfigError("--nproc", f"got {args.nproc}; must be >= 1")
    configs = args.config or [None]
    if len(configs) > 1 and args.run_dir:
        raise ConfigError("--run-dir", "names one run; several --config files each get a fresh run directory")
    if args.launcher != "direct":
        return _submit_train(args, configs)
    for flag in ("profile", "nodes", "time", "parallelism"):
        if getattr(args, flag) is not None:
            raise ConfigError(f"--{flag}", "applies to --launcher slurm|local|debug only")
    if len(configs) > 1:
        raise ConfigError("--config", "several runs at once need --launcher slurm or local (one job array)")
    cfg, run_dir = resolve_run(configs[0], args.overrides, args.run_dir, args.nproc)
    print(f"run directory: {run_dir}")
    print(f"watch: tensorboard --logdir {run_dir / 'tb'}")
    if args.nproc == 1:
        from scaling.train.loop import train

        summary = train(cfg, run_dir)
        return 0 if summary.get("end_reason") == "completed" else 1
    return launch_local(cfg, run_dir, args.nproc)


def _submit_train(args: argparse.Namespace, configs: list) -> int:
    """`scaling train --launcher slurm|local|debug`: submit the run(s) through submitit."""
    import os

    from scaling.train.launch import resolve_run
    from slurm.jobs import submit, wait
    from slurm.profile import load_profile, resources

    profile = None
    if args.launcher == "slurm":
        if args.profile is None:
            from slurm.profile import ProfileError, available_profiles

            raise ProfileError("--profile", f"--launcher slurm needs a profile; available: {', '.join(available_profiles())}")
        profile = load_profile(args.profile)
        res = resources(profile, args.nproc, nodes=args.nodes, time=args.time)
    elif args.launcher == "local":
        res = resources(load_profile(args.profile or "local"), args.nproc, nodes=args.nodes or 1, time=args.time)
    else:
        res = None
    runs = []
    try:
        for config in configs:
            runs.append(resolve_run(config, args.overrides, args.run_dir, args.nproc))
        jobs = submit(runs, args.launcher, profile=profile, res=res, parallelism=args.parallelism)
    except BaseException:
        for _, run_dir in runs:  # fresh folders that nothing was written to
            if run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise
    run_dirs = [d for _, d in runs]
    for job, run_dir in zip(jobs, run_dirs):
        print(f"submitted job {job.job_id} ({args.launcher}): {run_dir}")
        if args.launcher != "debug":
            print(f"  logs: {job.paths.stdout}  {job.paths.stderr} (task 0; one pair per task)")
    logdir = run_dirs[0] if len(run_dirs) == 1 else os.path.commonpath([str(d) for d in run_dirs])
    print(f"watch: tensorboard --logdir {logdir}")
    if not (args.wait or args.launcher == "debug"):
        print("follow: scaling jobs")
        return 0
    reasons = wait(jobs, run_dirs)
    for run_dir, reason in reasons.items():
        print(f"{run_dir}: {reason}")
    return 0 if all(r == "completed" for r in reasons.values()) else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from scaling.train.reevaluate import reevaluate

    print(json.dumps(reevaluate(args.run_dir), indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks import check_names, run_benchmarks

    try:
        check_names(args.names)
    except ValueError as err:
        raise ConfigError("bench NAME", str(err)) from None
    results, paths = run_benchmarks(args.names, args.scale, args.out)
    print(paths["markdown"].read_text())
    print(f"wrote {paths['json']} and {paths['markdown']}")
    errors = [r.name for r in results if r.status.startswith("error")]
    if errors:
        print(f"scaling bench: {len(errors)} benchmark(s) failed to run: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaling", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("describe", help="params, FLOPs, tokens, batch arithmetic and memory of a config")
    _config_args(p)
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("train", help="train one RunConfig on a DeepSpeed engine into a run directory")
    p.add_argument("--config", "-c", action="append",
                   help="RunConfig YAML file; repeat it to submit several runs as one job array")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. size=tiny data.frames=8 dino.local_crops=4")
    p.add_argument("--run-dir", help="run directory (default: a new folder under runs/); an existing one resumes")
    p.add_argument("--nproc", type=int, default=1, help="total number of ranks")
    p.add_argument("--launcher", choices=["direct", "slurm", "local", "debug"], default="direct",
                   help="direct: run here (default); slurm: sbatch through a profile; local: submitit's local "
                        "executor; debug: submitit in this process (for pdb)")
    p.add_argument("--profile", help="cluster profile: a name in slurm/profiles/ or a .yaml path")
    p.add_argument("--nodes", type=int, help="nodes to split --nproc over (default: as few as the profile allows)")
    p.add_argument("--time", help="time limit, minutes or [D-]HH:MM:SS (default: the profile's)")
    p.add_argument("--parallelism", type=int, help="most array elements running at once")
    p.add_argument("--wait", action="store_true", help="block until the run ends; non-zero exit if it failed")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("jobs", help="the runs submitted with --launcher: job id, state, step, last metric")
    p.add_argument("--runs", default="runs", help="where to look for submitted runs (default: runs/)")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("sweep", help="an Optuna sweep of RunConfigs: plan, submit, status, cancel, tensorboard")
    p.add_argument("action", choices=["plan", "submit", "status", "cancel", "tensorboard"])
    p.add_argument("spec", help="sweep spec: a .yaml path or the name of one in sweeps/")
    p.add_argument("--wait", action="store_true", help="submit: follow the sweep until it ends, with progress")
    p.add_argument("--launcher", choices=["slurm", "local", "debug"], help="submit: override the spec's launcher")
    p.add_argument("--profile", help="submit: override the spec's cluster profile")
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.add_argument("--start", action="store_true", help="tensorboard: start it instead of printing the command")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("fit", help="fit a scaling law (saturating power law or Chinchilla) to a CSV of points")
    p.add_argument("csv")
    p.add_argument("--law", choices=["power", "chinchilla"], required=True)
    p.add_argument("--x", help="power: the x column (params, FLOPs or samples)")
    p.add_argument("--y", default="loss", help="the loss or error column (default: loss)")
    p.add_argument("--n", help="chinchilla: the parameter-count column")
    p.add_argument("--d", help="chinchilla: the data column (tokens / samples)")
    p.add_argument("--c", help="chinchilla: the training-FLOPs column; D = C / (6 N)")
    p.add_argument("--drop-top", type=int, default=0, metavar="K", help="leave out the K highest y values first")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print E, A, (B,) alpha, (beta,) with intervals as JSON")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("analyze", help="tables, scaling-law fits, plots and report.html for run or sweep directories")
    p.add_argument("paths", nargs="+", metavar="SWEEP_OR_RUN_DIR")
    p.add_argument("--out", required=True, help="where the outputs go")
    p.add_argument("--metric", default="final_knn_top1", help="the metric compared (default: final_knn_top1)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the fits' intervals")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("evaluate", help="re-evaluate a finished run from its run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the mini-study: a sweep of both methods on synthetic clips, analysed")
    p.add_argument("--spec", default="demo", help="the sweep spec (default: sweeps/demo.yaml)")
    p.add_argument("--launcher", choices=["slurm", "local"], help="default: SLURM when sbatch answers, else local")
    p.add_argument("--fresh", action="store_true", help="start over: remove the demo sweep's directory first")
    p.add_argument("--out", help="where the report goes (default: <sweep dir>/report)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the fits' intervals")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="benchmarks against their goals: step vs timm, DropToken, ZeRO memory, fit "
                                     "speed, data pipeline, sweep overhead (JSON + markdown)")
    p.add_argument("names", nargs="*", metavar="NAME", help="which benchmarks (default: all)")
    p.add_argument("--scale", choices=["full", "smoke"], default="full",
                   help="full: the recorded sizes (default); smoke: the smallest sizes, to check they run")
    p.add_argument("--out", default="runs/bench", help="where bench.json and bench.md go (default: runs/bench)")
    p.set_defaults(func=cmd_bench)
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
