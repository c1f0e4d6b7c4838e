"""Many-runs layer's command: `scaling sweep plan|submit|status|cancel|tensorboard SPEC`."""
from __future__ import annotations

import argparse
import os


def cmd_sweep(args: argparse.Namespace) -> int:
    from sweeps import commands
    from sweeps.spec import check_data, load_spec

    spec = load_spec(args.spec, check_storage=args.action != "plan")
    if args.action in ("plan", "submit"):
        check_data(spec)  # before any job: a real corpus's manifests must exist
    if args.action == "plan":
        print(commands.plan_text(spec, commands.plan(spec)))
        return 0
    if args.action == "submit":
        return _submit(spec, args)
    if args.action == "status":
        print(commands.status_text(spec, commands.status(spec), args.json))
        return 0
    if args.action == "cancel":
        commands.cancel(spec, grace_s=args.grace)
        return 0
    cmd = commands.tensorboard_command(spec)
    if not args.start:
        print(" ".join(cmd))
        return 0
    os.execvp(cmd[0], cmd)
    return 0


def _submit(spec, args: argparse.Namespace) -> int:
    from sweeps import commands
    from sweeps.spec import SpecError, check_precision

    launcher = {k: v for k, v in (("type", args.launcher), ("profile", args.profile)) if v}
    merged = {**spec.launcher, **launcher}
    if launcher and merged["type"] == "slurm" and not merged.get("profile"):
        raise SpecError("--profile", "a slurm launcher needs a cluster profile")
    # Before any trial or job: the ranks' device (the profile's nodes, or this machine) runs the precision.
    _, res = commands._launch(spec, merged)
    check_precision(spec, bool(res and res.gpus_per_node) if merged["type"] == "slurm" else None)
    print(f"sweep {spec.name}: {spec.trials} trial(s), storage {commands.storage_url(spec)}")
    print(f"watch: {' '.join(commands.tensorboard_command(spec))}")
    commands.submit(spec, launcher)
    if not args.wait:
        print(f"follow: scaling sweep status {args.spec}")
        return 0
    final = commands.wait(spec, launcher)
    return 0 if not final.get("FAIL") or all_points_done(spec) else 1


def all_points_done(spec) -> bool:
    """Every trial the spec asks for is complete or pruned (failed retries may remain on record)."""
    from sweeps import commands

    c = commands.counts(commands.status(spec))
    return c.get("COMPLETE", 0) + c.get("PRUNED", 0) >= spec.trials


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="an Optuna sweep of RunConfigs: plan, submit, status, cancel, tensorboard")
    p.add_argument("action", choices=["plan", "submit", "status", "cancel", "tensorboard"])
    p.add_argument("spec", help="sweep spec: a .yaml path or the name of one in sweeps/")
    p.add_argument("--wait", action="store_true", help="submit: follow the sweep until it ends, with progress")
    p.add_argument("--launcher", choices=["slurm", "local", "debug"], help="submit: override the spec's launcher")
    p.add_argument("--profile", help="submit: override the spec's cluster profile")
    p.add_argument("--json", action="store_true", help="status: print JSON")
    p.add_argument("--grace", type=float, default=120.0, metavar="S",
                   help="cancel: seconds running jobs get to save their step and stop before the scheduler "
                        "cancels them (default 120)")
    p.add_argument("--start", action="store_true", help="tensorboard: start it instead of printing the command")
    p.set_defaults(func=cmd_sweep, imports=("optuna",))  # see scaling.cli.main
