"""Analysis commands: `scaling fit CSV` and `scaling analyze DIRS --out DIR`.

The analysis layer never trains and reads run directories through scaling.schema only, so its
commands refuse bad input with their own `InputError` (the entry point reports it as a usage error).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scaling.schema import InputError as InputError  # re-exported: it lived here


def cmd_fit(args: argparse.Namespace) -> int:
    """`scaling fit CSV --law chinchilla|power`: fit a scaling law to any table of points."""
    import warnings

    import pandas as pd

    from analysis.fits import FitError, FitWarning, fit_chinchilla, fit_power

    path = Path(args.csv)
    if not path.is_file():
        raise InputError("csv", f"no such file: {path}")
    for flag, value in (("--bootstrap", args.bootstrap), ("--drop-top", args.drop_top)):
        if value < 0:
            raise InputError(flag, f"got {value}; must be >= 0")
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:  # pandas' EmptyDataError and ParserError are ValueErrors
        raise InputError("csv", f"{path} is not a readable CSV table: {' '.join(str(err).split())}") from None

    def column(flag: str, name: str | None):
        if name is None:
            raise InputError(flag, f"required for --law {args.law}; columns: {', '.join(table.columns)}")
        if name not in table.columns:
            raise InputError(flag, f"no column {name!r} in {path}; columns: {', '.join(table.columns)}")
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
                    raise InputError("--d", "give exactly one of --d COL (tokens or samples) or --c COL "
                                             "(training FLOPs, with D = C / (6 N))")
                d = column("--d", args.d) if args.d else column("--c", args.c) / (6 * n)
                fit = fit_chinchilla(n, d, y, bootstrap=args.bootstrap, seed=args.seed)
        except FitError as err:
            raise InputError("data", str(err)) from None
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
            raise InputError("paths", f"no such run or sweep directory: {path}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("--out", f"{out} exists and is not a folder")
    if args.bootstrap < 0:
        raise InputError("--bootstrap", f"got {args.bootstrap}; must be >= 0 (0: no intervals)")
    try:  # analyze() creates --out only once the runs are read and the metric is found
        written = analyze(args.paths, args.out, metric=args.metric, bootstrap=args.bootstrap)
    except ValueError as err:
        raise InputError("paths", str(err)) from None
    print(f"report: {written['report']}")
    for name in ("runs", "fits", "batch_sensitivity", "scaling"):
        print(f"{name}: {written[name]}")
    for fig in written["figures"]:
        print(f"figure: {fig} (+ .svg)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
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
