"""The CLI's study-level commands: jobs, sweeps, fits, analysis and the demo.

They orchestrate the layers above one run (slurm/, sweeps/, analysis/), so they live beside the
CLI rather than inside `scaling/`'s one-run code; every import of those layers is lazy.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scaling.config import ConfigError, RunConfig


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


def _demo_launcher(choice: str | None) -> tuple[dict, str]:
    """The real SLURM cluster when sbatch answers (with the `local` profile's partition), else
    submitit's local executor; `--launcher` overrides."""
    from slurm.cluster import partitions, sbatch_answers
    from slurm.profile import load_profile

    if choice == "local":
        return {"type": "local"}, "submitit's local executor (--launcher local)"
    if choice == "slurm" or choice is None:
        partition = load_profile("local").partition
        if sbatch_answers() and partition in partitions():
            return {"type": "slurm", "profile": "local"}, f"the SLURM cluster (sbatch answers; partition {partition!r})"
        if choice == "slurm":
            raise ConfigError("--launcher", f"slurm: no SLURM controller with a {partition!r} partition answers "
                                            "(start one with slurm/local_cluster.sh start)")
    return {"type": "local"}, "submitit's local executor (no SLURM cluster answers)"


def cmd_demo(args: argparse.Namespace) -> int:
    """The mini-study: a sweep of both methods on the synthetic clips, its analysis and a summary."""
    import shutil
    import time

    from analysis.report import analyze
    from sweeps import commands
    from sweeps.spec import load_spec

    spec = load_spec(args.spec)
    launcher, why = _demo_launcher(args.launcher)
    if args.fresh and Path(spec.dir).exists():
        shutil.rmtree(spec.dir)
        print(f"--fresh: removed {spec.dir}")
    start = time.time()
    print(f"demo sweep {spec.name}: {spec.trials} runs in {spec.dir}, on {why}")
    print(f"watch: {' '.join(commands.tensorboard_command(spec))}")
    try:
        commands.submit(spec, launcher, say=lambda line: print(f"  {line}"))
        counts = commands.wait(spec, launcher, poll_s=3.0, say=lambda line: print(f"  {line}", flush=True))
    except KeyboardInterrupt:
        return _demo_interrupted(spec)
    out = Path(args.out) if args.out else Path(spec.dir) / "report"
    written = analyze([spec.dir], out, bootstrap=args.bootstrap)
    _demo_summary(out)
    print(f"\nreport: {written['report']}  ({time.time() - start:.0f} s; runs {counts})")
    return 0 if not counts.get("FAIL") or _all_points_done(spec) else 1


def _demo_interrupted(spec) -> int:
    """Ctrl-C: stop the demo's running jobs (their trials are marked cancelled, which is not a
    failure, so the next `scaling demo` submits them again and they resume from their checkpoints)."""
    import signal

    from sweeps import commands

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    print("\ninterrupted: stopping the demo's running jobs", flush=True)
    commands.cancel(spec, say=lambda line: print(f"  {line}"))
    print(f"the finished runs are kept in {spec.dir}; run the same command again to continue "
          "(unfinished runs resume from their last checkpoint)")
    return 130


def _demo_summary(out: Path) -> None:
    """The terminal summary: batch sensitivity for both methods, scaling exponents, DropToken."""
    import pandas as pd

    fits = json.loads((out / "fits.json").read_text())
    print("\nbatch sensitivity (k-NN top-1 %, mean ± half the 95% CI over seeds):")
    print((out / "batch_sensitivity.md").read_text().split("\n\n")[2])
    def table(name: str) -> pd.DataFrame:  # an empty analysis table is written as an (almost) empty file
        return pd.read_csv(out / name) if (out / name).stat().st_size > 1 else pd.DataFrame()

    gain = table("random_init.csv")
    if not gain.empty:
        print("learning vs the random-init backbone (k-NN top-1 %, at each arm's largest batch):")
        for _, r in gain.loc[gain.groupby(["method", "size", "drop_rate"], dropna=False)["global_batch"].idxmax()].iterrows():
            ci = (f" (95% CI {r['gain_ci_low']:+.1f} to {r['gain_ci_high']:+.1f})"
                  if pd.notna(r["gain_ci_low"]) else "")
            drop = f" drop {r['drop_rate']:g}" if r["drop_rate"] else ""
            print(f"  {r['method']} {r['size']}{drop}, batch {r['global_batch']}: {r['trained']:.1f} vs "
                  f"{r['random_init']:.1f} at random init, {r['gain']:+.1f}{ci}; {r['seeds']} seed(s)")
    for name, fit in fits["model_scaling"].items():
        if name.endswith(":params") and "alpha" in fit:
            lo, hi = fit["alpha"]["interval"]
            caveat = next((w for w in fit.get("warnings", []) if "not identified" in w), "")
            print(f"scaling exponent {name.split(':')[0]}: k-NN error ~ params^-{fit['alpha']['value']:.3f} "
                  f"(95% CI {lo:.3f} to {hi:.3f}; {fit['n_points']} runs)" + (f"; caution: {caveat}" if caveat else ""))
        elif name.endswith(":params"):
            print(f"scaling exponent {name.split(':')[0]}: not fitted ({fit.get('skipped', 'no fit')})")
    drop = table("droptoken.csv")
    for _, r in drop.loc[drop["drop_rate"] > 0].iterrows() if not drop.empty else []:
        same = drop.loc[(drop["drop_rate"] == 0) & (drop["size"] == r["size"]) & (drop["global_batch"] == r["global_batch"])]
        if same.empty:
            continue
        base = same.iloc[0]
        print(f"DropToken {r['drop_rate']:g} ({r['size']}, batch {r['global_batch']}): "
              f"{r['total_flops'] / base['total_flops']:.2f}x the training FLOPs of no drop, "
              f"k-NN {r['metric']:.1f} vs {base['metric']:.1f} (seeds: {r['seeds']} vs {base['seeds']})")
