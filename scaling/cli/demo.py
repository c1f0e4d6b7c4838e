"""`scaling demo`: the mini-study. A sweep of both methods on synthetic clips, then its analysis
and a terminal summary.

It composes the sweep layer (submit, wait) with the analysis layer (the report), so it lives at the
top of the house, in the entry point, beside the assembly of the layers' commands.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from scaling.config import ConfigError

log = logging.getLogger(__name__)


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
    from scaling.logs import indented
    from sweeps import commands
    from sweeps.cli import all_points_done
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
        with indented("  "):
            commands.submit(spec, launcher)
            counts = commands.wait(spec, launcher, poll_s=3.0)
    except KeyboardInterrupt:
        return _demo_interrupted(spec)
    out = Path(args.out) if args.out else Path(spec.dir) / "report"
    written = analyze([spec.dir], out, bootstrap=args.bootstrap)
    _demo_summary(out)
    print(f"\nreport: {written['report']}  ({time.time() - start:.0f} s; runs {counts})")
    return 0 if not counts.get("FAIL") or all_points_done(spec) else 1


def _demo_interrupted(spec) -> int:
    """Ctrl-C: stop the demo's running jobs (their trials are marked cancelled, which is not a
    failure, so the next `scaling demo` submits them again and they resume from their checkpoints)."""
    import signal

    from scaling.logs import indented
    from sweeps import commands

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    print("\ninterrupted: stopping the demo's running jobs", flush=True)
    with indented("  "):
        commands.cancel(spec, grace_s=15.0)  # its local jobs got the Ctrl-C too: no long wait
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
            why = fit.get("skipped", "no fit")
            print(f"scaling exponent {name.split(':')[0]}: " + (why if why.startswith("not fitted") else f"not fitted ({why})")
                  + ("; the model-scaling section shows points, not a law" if "needs at least" in why else ""))
    critical = table("critical_batch.csv")
    if not critical.empty and critical["runs_measured"].fillna(0).gt(0).any():
        from analysis.critical import describe_row

        print("critical batch (McCandlish's B_simple measured in training, beside B_95, the batch that keeps "
              "95% of the largest batch's k-NN):")
        for _, r in critical.loc[critical["runs_measured"].fillna(0) > 0].iterrows():
            print(f"  {describe_row(r)}")
    drop = table("droptoken.csv")
    for _, r in drop.loc[drop["drop_rate"] > 0].iterrows() if not drop.empty else []:
        same = drop.loc[(drop["drop_rate"] == 0) & (drop["method"] == r["method"]) & (drop["size"] == r["size"])
                        & (drop["global_batch"] == r["global_batch"])]
        if same.empty:
            continue
        base = same.iloc[0]
        print(f"DropToken {r['drop_rate']:g} ({r['size']}, batch {r['global_batch']}): "
              f"{r['total_flops'] / base['total_flops']:.2f}x the training FLOPs of no drop, "
              f"k-NN {r['metric']:.1f} vs {base['metric']:.1f} (seeds: {r['seeds']} vs {base['seeds']})")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the mini-study: a sweep of both methods on synthetic clips, analysed")
    p.add_argument("--spec", default="demo", help="the sweep spec (default: sweeps/demo.yaml)")
    p.add_argument("--launcher", choices=["slurm", "local"], help="default: SLURM when sbatch answers, else local")
    p.add_argument("--fresh", action="store_true", help="start over: remove the demo sweep's directory first")
    p.add_argument("--out", help="where the report goes (default: <sweep dir>/report)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the fits' intervals")
    p.set_defaults(func=cmd_demo, imports=("optuna",))  # see scaling.cli.main
