"""`scaling plan --budget GPU_HOURS --sweep DIR`: the run to submit next, from a finished sweep's law.

The law and the choice are analysis.plan's; this command supplies what only the one-run layer
knows, the suite's sizes with their parameters and FLOPs per sample (`describe`), and turns the
budget into FLOPs at the GPU's datasheet peak and the planned MFU.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from scaling.schema import InputError


def _candidates(cfg_dict: dict, rates: list[float]):
    """Every suite size at every drop rate the arm ran, from one of its runs' configs."""
    from analysis.plan import Candidate
    from scaling.config import SIZES, RunConfig
    from scaling.describe import describe

    base = RunConfig.from_dict(cfg_dict)
    out = []
    for size in SIZES:
        for rate in rates:
            info = describe(base.replace(size=size, drop_rate=rate), "cuda")
            params = info["params"].get("video_backbone", info["params"].get("backbone"))
            out.append(Candidate(size, float(params), float(info["flops_per_sample"]), float(rate)))
    return out


def _peak(args: argparse.Namespace) -> tuple[float, str]:
    """The GPU's bf16 dense peak (FLOP/s) and where it came from: --gpu, the GPUs a --profile's
    constraint names (the slowest of them: the budget buys no more than it can do), or the default."""
    from scaling.data.budget import PLANNED_PEAK_TFLOPS
    from scaling.train.throughput import DATASHEET_PEAKS, datasheet_peak_for

    if args.gpu is not None:
        peak = datasheet_peak_for(args.gpu, "bf16")
        if peak is None:
            raise InputError("--gpu", f"unknown GPU {args.gpu!r}; known: {', '.join(DATASHEET_PEAKS)}")
        return peak, f"--gpu {args.gpu}"
    if args.profile is not None:
        from slurm.profile import load_profile

        profile = load_profile(args.profile)
        tokens = [t.strip().lower() for t in (profile.constraint or "").replace("&", "|").split("|") if t.strip()]
        named = {k: v[0] for k, v in DATASHEET_PEAKS.items() if any(t in k.lower() for t in tokens)}
        if not named:
            raise InputError("--profile", f"profile {profile.name!r} names no GPU model this suite knows in its "
                                          f"constraint ({profile.constraint!r}); pass --gpu")
        slowest = min(named, key=named.get)
        return named[slowest], f"the slowest GPU profile {profile.name!r} allows ({slowest})"
    return PLANNED_PEAK_TFLOPS * 1e12, "the default GPU (H100 SXM)"


def cmd_plan(args: argparse.Namespace) -> int:
    import warnings

    import yaml

    from analysis.plan import PlanRefused, recommend
    from analysis.runs import LoadWarning, load
    from scaling.data.budget import PLANNED_MFU

    if not args.budget > 0:
        raise InputError("--budget", f"got {args.budget}; must be > 0 GPU-hours")
    mfu = PLANNED_MFU if args.mfu is None else args.mfu
    if not 0 < mfu <= 1:
        raise InputError("--mfu", f"got {mfu}; must be in (0, 1]")
    sweep = Path(args.sweep)
    if not sweep.is_dir():
        raise InputError("--sweep", f"no such sweep directory: {sweep}")
    peak, source = _peak(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadWarning)
        df = load(sweep)
    if df.empty:
        raise InputError("--sweep", f"no runs in {sweep}")
    if args.metric not in df:
        raise InputError("--metric", f"no metric {args.metric!r} in the runs")
    arms = sorted(df["method"].dropna().unique())
    if args.arm is not None and args.arm not in arms:
        raise InputError("--arm", f"no arm {args.arm!r} in {sweep}; arms: {', '.join(arms)}")
    budget_flops = args.budget * 3600 * peak * mfu
    print(f"budget: {args.budget:g} GPU-hours = {budget_flops:.3g} training FLOPs at {mfu:.0%} MFU of "
          f"{peak / 1e12:g} TFLOP/s, the bf16 dense peak of {source}")
    refused = 0
    for arm in [args.arm] if args.arm else arms:
        runs = df.loc[df["method"] == arm]
        cfg = yaml.safe_load((Path(runs["run_dir"].iloc[0]) / "config.yaml").read_text())
        rates = sorted({0.0, *runs["drop_rate"].fillna(0).astype(float)})
        try:
            plan = recommend(df, arm, budget_flops, _candidates(cfg, rates), args.metric, bootstrap=args.bootstrap)
        except PlanRefused as why:
            refused += 1
            print(f"\n{arm}: refused — " + "; ".join(why.reasons))
            continue
        lo, hi = plan.interval
        print(f"\n{arm}: {plan.size} ({plan.params / 1e6:.3g}M backbone parameters), {plan.samples:,} samples, "
              f"global batch {plan.global_batch}, drop rate {plan.drop_rate:g}")
        print(f"  predicted {args.metric}: {plan.predicted_metric:.1f} "
              f"({plan.level:.0%} bootstrap interval {lo:.1f} to {hi:.1f})")
        for note in plan.notes:
            print(f"  {note}")
        print("  overrides: " + " ".join(plan.overrides(cfg.get("method", arm))))
    return 1 if refused and refused == (1 if args.arm else len(arms)) else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="the run to submit for a GPU-hour budget, from a finished sweep's fitted law")
    p.add_argument("--budget", type=float, required=True, help="GPU-hours")
    p.add_argument("--sweep", required=True, help="a finished sweep's directory")
    p.add_argument("--arm", help="one arm (default: every arm of the sweep)")
    p.add_argument("--metric", default="final_knn_top1", help="the metric the law is fitted on (default: k-NN top-1)")
    p.add_argument("--gpu", help="the GPU model for its datasheet peak, e.g. 'H100 SXM', 'A100' (default: H100 SXM)")
    p.add_argument("--profile", help="a SLURM profile: its constraint's GPU models (the slowest) give the peak")
    p.add_argument("--mfu", type=float, help="the planned model-FLOPs utilisation (default: 0.4)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits for the prediction's interval")
    p.set_defaults(func=cmd_plan)
