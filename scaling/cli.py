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


def cmd_jobs(args: argparse.Namespace) -> int:
    from slurm.jobs import JOB_RECORD, progress, read_record, run_states

    root = Path(args.runs)
    run_dirs = sorted({p.parent for pattern in ("*/", "*/*/", "*/*/*/") for p in root.glob(pattern + JOB_RECORD)})
    if not run_dirs:
        print(f"no submitted runs under {root}/")
        return 0
    states = run_states(run_dirs)
    print(f"{'job':<12} {'launcher':<8} {'state':<11} {'step':>11}  {'last metric':<28} run")
    for run_dir in run_dirs:
        rec, last = read_record(run_dir), progress(run_dir)
        planned = _planned_steps(run_dir)
        step = f"{last.get('step', 0)}/{planned}" if planned else str(last.get("step", 0))
        metric = next(((k, last[k]) for k in ("eval/knn_top1", "train/loss") if isinstance(last.get(k), (int, float))), None)
        metric_text = f"{metric[0]}={metric[1]:.4g}" if metric else "-"
        print(f"{rec.get('job_id', '-'):<12} {rec.get('launcher', '-'):<8} {states[run_dir]:<11} {step:>11}  "
              f"{metric_text:<28} {run_dir}")
    return 0


def _planned_steps(run_dir: Path) -> int | None:
    try:
        return RunConfig.load(run_dir / "config.yaml").total_steps
    except (OSError, ConfigError):
        return None


def cmd_sweep(args: argparse.Namespace) -> int:
    """`scaling sweep plan|submit|status|cancel|tensorboard SPEC`."""
    from sweeps import commands
    from sweeps.spec import load_spec

    spec = load_spec(args.spec, check_storage=args.action != "plan")
    if args.action == "plan":
        commands.print_plan(spec, commands.plan(spec))
        return 0
    if args.action == "submit":
        launcher = {k: v for k, v in (("type", args.launcher), ("profile", args.profile)) if v}
        if launcher:
            from sweeps.spec import SpecError

            merged = {**spec.launcher, **launcher}
            if merged["type"] == "slurm" and not merged.get("profile"):
                raise SpecError("--profile", "a slurm launcher needs a cluster profile")
        print(f"sweep {spec.name}: {spec.trials} trial(s), storage {commands.storage_url(spec)}")
        print(f"watch: {' '.join(commands.tensorboard_command(spec))}")
        commands.submit(spec, launcher)
        if not args.wait:
            print(f"follow: scaling sweep status {args.spec}")
            return 0
        final = commands.wait(spec, launcher)
        return 0 if not final.get("FAIL") or _all_points_done(spec) else 1
    if args.action == "status":
        commands.print_status(spec, commands.status(spec), args.json)
        return 0
    if args.action == "cancel":
        commands.cancel(spec)
        return 0
    cmd = commands.tensorboard_command(spec)
    if not args.start:
        print(" ".join(cmd))
        return 0
    import os

    os.execvp(cmd[0], cmd)
    return 0


def _all_points_done(spec) -> bool:
    from sweeps import commands

    c = commands.counts(commands.status(spec))
    return c.get("COMPLETE", 0) + c.get("PRUNED", 0) >= spec.trials


def cmd_fit(args: argparse.Namespace) -> int:
    """`scaling fit CSV --law chinchilla|power`: fit a scaling law to any table of points."""
    import warnings

    import pandas as pd

    from analysis.fits import FitError, FitWarning, fit_chinchilla, fit_power

    path = Path(args.csv)
    if not path.is_file():
        raise ConfigError("csv", f"no such file: {path}")
    table = pd.read_csv(path)

    def column(flag: str, name: str | None):
        if name is None:
            raise ConfigError(flag, f"required for --law {args.law}; columns: {', '.join(table.columns)}")
        if name not in table.columns:
            raise ConfigError(flag, f"no column {name!r} in {path}; columns: {', '.join(table.columns)}")
        return pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=float)

    y = column("--y", args.y)
    if args.drop_top:
        keep = y.argsort(kind="stable")[: max(0, len(y) - args.drop_top)]
        table, y = table.iloc[sorted(keep)].reset_index(drop=True), y[sorted(keep)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FitWarning)
        try:
            if args.law == "power":
                fit = fit_power(column("--x", args.x), y, bootstrap=args.bootstrap, seed=args.seed)
            else:
                n = column("--n", args.n)
                if (args.d is None) == (args.c is None):
                    raise ConfigError("--d", "give exactly one of --d COL (tokens or samples) or --c COL "
                                             "(training FLOPs, with D = C / (6 N))")
                d = column("--d", args.d) if args.d else column("--c", args.c) / (6 * n)
                fit = fit_chinchilla(n, d, y, bootstrap=args.bootstrap, seed=args.seed)
        except FitError as err:
            raise ConfigError("data", str(err)) from None
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(fit.to_dict(), indent=2))
        return 0
    print(f"{fit.law} fit of {fit.n_points} points from {path} (objective {fit.objective:.6g})")
    for name, value in fit.params.items():
        lo, hi = fit.intervals.get(name, (float("nan"), float("nan")))
        print(f"  {name:<6} {value:>12.6g}   {fit.level:.0%} interval [{lo:.6g}, {hi:.6g}]")
    if fit.extrapolation:
        print(f"  leaving the largest scale out, it is predicted within {fit.extrapolation['relative_error']:.2%}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """`scaling analyze SWEEP_OR_RUN_DIRS --out DIR`: tables, fits, plots and report.html."""
    from analysis.report import analyze

    for path in args.paths:
        if not Path(path).exists():
            raise ConfigError("paths", f"no such run or sweep directory: {path}")
    try:
        written = analyze(args.paths, args.out, metric=args.metric, bootstrap=args.bootstrap)
    except ValueError as err:
        raise ConfigError("paths", str(err)) from None
    print(f"report: {written['report']}")
    for name in ("runs", "fits", "batch_sensitivity", "scaling"):
        print(f"{name}: {written[name]}")
    for fig in written["figures"]:
        print(f"figure: {fig} (+ .svg)")
    return 0


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
