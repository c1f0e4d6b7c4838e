"""Where-layer commands: `scaling train` (here, or submitted through submitit) and `scaling jobs`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from scaling import schema
from scaling.config import ConfigError, RunConfig


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
    print(f"watch: tensorboard --logdir {run_dir / schema.TB}")
    if args.nproc == 1:
        from scaling.train.loop import train

        summary = train(cfg, run_dir)
        return 0 if summary.get(schema.END_REASON) == schema.COMPLETED else 1
    return launch_local(cfg, run_dir, args.nproc)


def _submit_train(args: argparse.Namespace, configs: list) -> int:
    """`scaling train --launcher slurm|local|debug`: submit the run(s) through submitit."""
    from scaling.train.launch import check_run, place_run
    from slurm.jobs import submit, wait
    from slurm.profile import launcher_resources

    profile, res = launcher_resources(args.launcher, args.profile, args.nproc, nodes=args.nodes, time=args.time)
    # The ranks run on the profile's nodes (slurm), or on this machine (local, debug: None).
    gpus = bool(res and res.gpus_per_node) if args.launcher == "slurm" else None
    # Every run is checked before any run directory is created.
    checked = [check_run(config, args.overrides, args.run_dir, args.nproc, gpus=gpus) for config in configs]
    runs = []
    try:
        for cfg, existing in checked:
            runs.append((cfg, existing if existing is not None else place_run(cfg, args.run_dir)))
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
    return 0 if all(r == schema.COMPLETED for r in reasons.values()) else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from slurm.jobs import progress, read_record, run_states

    root = Path(args.runs)
    run_dirs = sorted({p.parent for pattern in ("*/", "*/*/", "*/*/*/") for p in root.glob(pattern + schema.JOB_RECORD)})
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
        return RunConfig.load(run_dir / schema.CONFIG).total_steps
    except (OSError, ConfigError):
        return None


def add_commands(sub: argparse._SubParsersAction) -> None:
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
