"""The benchmarks' command: `scaling bench [NAME ...]`."""
from __future__ import annotations

import argparse
import sys

from scaling.config import ConfigError


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


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks against their goals: step vs timm, DropToken, ZeRO memory, fit "
                                     "speed, data pipeline, real-file decoding, sweep overhead (JSON + markdown)")
    p.add_argument("names", nargs="*", metavar="NAME", help="which benchmarks (default: all)")
    p.add_argument("--scale", choices=["full", "smoke"], default="full",
                   help="full: the recorded sizes (default); smoke: the smallest sizes, to check they run")
    p.add_argument("--out", default="runs/bench", help="where bench.json and bench.md go (default: runs/bench)")
    p.set_defaults(func=cmd_bench)
