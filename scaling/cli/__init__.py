"""The single command line, `scaling`: the top of the house.

Each layer keeps its commands beside its code, in an `add_commands(subparsers)`; this entry point
assembles them (and holds the demo, which composes a sweep with its analysis). It is the only
module under scaling/ that imports the layers above the one-run layer.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import analysis.cli
import benchmarks.cli
import scaling.commands
import slurm.cli
import sweeps.cli
from scaling.cli import demo, plan
from scaling.config import ConfigError
from scaling.logs import setup
from scaling.schema import InputError

# In the order `scaling --help` lists them: one run, where it runs, many runs, what they mean.
LAYERS = (scaling.commands, slurm.cli, sweeps.cli, analysis.cli, plan, demo, benchmarks.cli)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaling", description="The scaling-study suite's command line: "
                                                                 "one thin subcommand per user action.")
    sub = parser.add_subparsers(dest="command", required=True)
    for layer in LAYERS:
        layer.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup()
    # Optuna keeps the error of an optional import it defers (redis) with its traceback, and so every
    # frame above the first `import optuna`. Imported here, that is this frame alone; imported first
    # inside a sweep's submit, that frame's submitit jobs would live until the interpreter is torn
    # down, and their __del__ would then print "Exception ignored" tracebacks after the summary.
    for name in getattr(args, "imports", ()):
        importlib.import_module(name)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"scaling: invalid config: {err}", file=sys.stderr)
        return 2
    except InputError as err:
        print(f"scaling: invalid input: {err}", file=sys.stderr)
        return 2

