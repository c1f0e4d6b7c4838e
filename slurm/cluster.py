"""Where-layer: what the SLURM controller says — partitions (checked before sbatch) and job states.

Job states come from `sacct` only where accounting is configured; otherwise from `scontrol`, which
knows pending, running and recently finished jobs. Nothing here prints sacct's warnings.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass

from slurm.profile import Profile, ProfileError, Resources, mem_mb

# States after which a job will not run again (a requeued job goes back to PENDING instead).
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                          "BOOT_FAIL", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "REVOKED"})


def _run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def sbatch_answers() -> bool:
    """True when sbatch exists and the controller responds."""
    if not shutil.which("sbatch") or not shutil.which("sinfo"):
        return False
    try:
        return _run(["sinfo", "-h", "-o", "%P"], timeout=15).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: int
    cpus_per_node: int
    mem_mb_per_node: int
    gpus_per_node: int


def _gpus(gres: str) -> int:
    """'gpu:8' / 'gpu:a100:4(S:0-1)' / '(null)' -> GPUs per node."""
    total = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def partitions() -> dict[str, Partition]:
    """The cluster's partitions, with the smallest node of each (what a job can count on)."""
    out = _run(["sinfo", "-h", "-o", "%R|%D|%c|%m|%G"])
    if out.returncode != 0:
        raise ProfileError("partition", f"sinfo failed, so the partition cannot be checked: {out.stderr.strip()}")
    found: dict[str, Partition] = {}
    for line in out.stdout.splitlines():
        name, nodes, cpus, mem, gres = (line.split("|") + [""] * 5)[:5]
        if not name:
            continue
        part = Partition(name, int(nodes or 0), int(cpus.rstrip("+") or 0), int(mem.rstrip("+") or 0), _gpus(gres))
        if name in found:  # one line per node configuration: total the nodes, keep the smallest node
            old = found[name]
            part = Partition(name, old.nodes + part.nodes, min(old.cpus_per_node, part.cpus_per_node),
                             min(old.mem_mb_per_node, part.mem_mb_per_node), min(old.gpus_per_node, part.gpus_per_node))
        found[name] = part
    return found


def check_fits(profile: Profile, res: Resources) -> Partition:
    """Raise ProfileError, naming the field, when the request cannot run on the profile's partition."""
    parts = partitions()
    part = parts.get(profile.partition)
    if part is None:
        raise ProfileError("partition", f"{profile.partition!r} (profile {profile.name!r}) is not a partition of "
                           f"this cluster; available: {', '.join(sorted(parts)) or 'none'}")
    if res.nodes > part.nodes:
        raise ProfileError("--nodes", f"{res.nodes} nodes requested; partition {part.name!r} has {part.nodes}")
    if res.gpus_per_node > part.gpus_per_node:
        raise ProfileError("gpus_per_node", f"{res.gpus_per_node} GPUs per node requested; the nodes of partition "
                           f"{part.name!r} have {part.gpus_per_node}")
    cpus = res.cpus_per_task * res.tasks_per_node
    if part.cpus_per_node and cpus > part.cpus_per_node:
        raise ProfileError("cpus_per_task", f"{res.tasks_per_node} task(s) x {res.cpus_per_task} CPUs = {cpus} CPUs "
                           f"per node requested; the nodes of partition {part.name!r} have {part.cpus_per_node}")
    if res.mem is not None and part.mem_mb_per_node and mem_mb(res.mem) > part.mem_mb_per_node:
        raise ProfileError("mem", f"{res.mem} per node requested; the nodes of partition {part.name!r} have "
                           f"{part.mem_mb_per_node}M")
    return part


@functools.lru_cache(maxsize=1)
def accounting_enabled() -> bool:
    try:
        out = _run(["scontrol", "show", "config"], timeout=15)
    except (OSError, subprocess.SubprocessError):
        return False
    for line in out.stdout.splitlines():
        if line.split("=")[0].strip() == "AccountingStorageType":
            return "none" not in line.split("=", 1)[1]
    return False


def _task_ids(spec: str) -> list[int]:
    ids = []
    for part in spec.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            ids.extend(range(int(lo), int(hi or lo) + 1))
    return ids


def _scontrol_states(base_ids: set[str]) -> dict[str, str]:
    states: dict[str, str] = {}
    for base in sorted(base_ids):
        try:
            out = _run(["scontrol", "-o", "show", "job", base], timeout=15)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode != 0:  # purged from the controller (older than MinJobAge)
            continue
        for line in out.stdout.splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            state = fields.get("JobState")
            if not state:
                continue
            tasks = fields.get("ArrayTaskId")
            if tasks in (None, "N/A"):
                states[fields.get("JobId", "")] = state
                continue
            for task in _task_ids(tasks):  # a pending array is one record: "0-2%2", "1,3-5"
                states[f"{fields['ArrayJobId']}_{task}"] = state
    return states


def _sacct_states(base_ids: set[str]) -> dict[str, str]:
    cmd = ["sacct", "-n", "-X", "-P", "-o", "JobID,State"]
    for base in sorted(base_ids):
        cmd += ["-j", base]
    try:
        out = _run(cmd, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    if out.returncode == 0:
        for line in out.stdout.splitlines():
            job_id, _, state = line.partition("|")
            states[job_id] = state.split()[0] if state else "UNKNOWN"
    return states


def job_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM state of each job id ('123' or '123_4'); 'UNKNOWN' when the controller has forgotten it."""
    bases = {str(j).split("_")[0] for j in job_ids}
    states = _scontrol_states(bases)
    missing = {str(j).split("_")[0] for j in job_ids if str(j) not in states}
    if missing and accounting_enabled():
        states.update(_sacct_states(missing))
    return {str(j): states.get(str(j), "UNKNOWN") for j in job_ids}
