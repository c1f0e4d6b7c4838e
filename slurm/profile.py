"""Where-layer: cluster profiles (slurm/profiles/*.yaml) and the resources a run asks for.

A profile describes a partition's nodes and site settings; `resources()` turns a rank count into
nodes x tasks per node (one task per GPU, or one per rank on CPU nodes) and a time limit, and
`launcher_resources()` does so for a launcher (slurm, local, debug). Every mistake raises ProfileError
naming the field, before anything reaches sbatch.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from scaling.validate import ConfigError, integer, load_named_yaml, text

PROFILES = Path(__file__).resolve().parent / "profiles"


class ProfileError(ConfigError):
    """A profile or resource request is invalid; the message names the field."""


_MEM = re.compile(r"^(\d+)([KMGT]?)B?$", re.IGNORECASE)
_MEM_MB = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def mem_mb(text: str) -> int:
    """'16G' -> 16384 (SLURM's units: K, M (default), G, T)."""
    m = _MEM.match(str(text).strip())
    if not m:
        raise ValueError(text)
    return math.ceil(int(m.group(1)) * _MEM_MB[m.group(2).upper()])


def time_minutes(value: Any) -> int:
    """SLURM time formats -> whole minutes: 90, '90', 'HH:MM:SS', 'MM:SS', 'D-HH', 'D-HH:MM[:SS]'."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        if value < 1:
            raise ValueError(value)
        return value
    m = _TIME.match(str(value).strip())
    if not m:
        raise ValueError(value)
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
        total = int(days) * 1440 + hours * 60 + minutes + seconds / 60
    elif c is not None:  # HH:MM:SS
        total = int(a) * 60 + int(b) + int(c) / 60
    elif b is not None:  # MM:SS
        total = int(a) + int(b) / 60
    else:  # MM
        total = int(a)
    minutes = math.ceil(total)
    if minutes < 1:
        raise ValueError(value)
    return minutes


@dataclass(frozen=True)
class Profile:
    """One cluster's partition and site settings."""

    name: str
    partition: str
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int = 0             # 0: CPU nodes, one task per rank
    tasks_per_node: int | None = None  # CPU nodes: most ranks per node (GPU nodes: = GPUs per node)
    cpus_per_task: int = 1
    mem: str | None = None             # per node, SLURM units (e.g. 64G)
    time: str | int = "01:00:00"       # default time limit
    signal_delay_s: int = 120          # USR2 this long before the time limit
    max_timeout_requeues: int = 3      # timeouts requeue this often; preemptions without limit
    setup: tuple[str, ...] = ()        # shell lines before the ranks start
    python: str | None = None          # interpreter on the nodes (default: this one)
    sbatch: dict[str, Any] = field(default_factory=dict)  # other sbatch options, passed through

    def __post_init__(self) -> None:
        where = dict(error=ProfileError, note=f"profile {self.name!r}")
        text("partition", self.partition, **where)
        for name in ("account", "qos", "constraint", "python"):
            text(name, getattr(self, name), optional=True, **where)
        for name, lowest in (("gpus_per_node", 0), ("cpus_per_task", 1), ("signal_delay_s", 0),
                             ("max_timeout_requeues", 0)):
            integer(name, getattr(self, name), minimum=lowest, **where)
        if self.tasks_per_node is not None:
            integer("tasks_per_node", self.tasks_per_node, minimum=1, **where)
            if self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
                raise ProfileError("tasks_per_node", f"got {self.tasks_per_node} on nodes with gpus_per_node="
                                   f"{self.gpus_per_node}; GPU runs use one task per GPU, so leave it out "
                                   f"(profile {self.name!r})")
        if self.mem is not None:
            try:
                mem_mb(self.mem)
            except ValueError:
                raise ProfileError("mem", f"got {self.mem!r}; expected a size per node such as 64G or 500M "
                                   f"(profile {self.name!r})") from None
        try:
            time_minutes(self.time)
        except ValueError:
            raise ProfileError("time", f"got {self.time!r}; expected minutes or [D-]HH:MM:SS, at least "
                               f"1 minute (profile {self.name!r})") from None
        if not isinstance(self.setup, tuple) or not all(isinstance(s, str) for s in self.setup):
            raise ProfileError("setup", f"got {self.setup!r}; must be a list of shell lines (profile {self.name!r})")
        if not isinstance(self.sbatch, dict) or not all(isinstance(k, str) for k in self.sbatch):
            raise ProfileError("sbatch", f"got {self.sbatch!r}; must map sbatch option names to values "
                               f"(profile {self.name!r})")

    @property
    def time_min(self) -> int:
        return time_minutes(self.time)

    @classmethod
    def from_dict(cls, data: Any, name: str) -> Profile:
        if not isinstance(data, dict):
            raise ProfileError("profile", f"{name!r} must be a mapping of fields, got {type(data).__name__}")
        allowed = [f.name for f in fields(cls) if f.name != "name"]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ProfileError(unknown[0], f"unknown profile field in {name!r}; allowed fields: {', '.join(allowed)}")
        values = dict(data)
        if values.get("partition") is None:
            raise ProfileError("partition", f"is required (profile {name!r}): the partition sbatch submits to")
        if "setup" in values:
            setup = values["setup"] if values["setup"] is not None else []
            values["setup"] = tuple(setup) if isinstance(setup, list) else setup
        if values.get("sbatch") is None:
            values.pop("sbatch", None)
        return cls(name=name, **values)


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A profile by name (slurm/profiles/NAME.yaml) or by path to a YAML file."""
    path, data = load_named_yaml(name_or_path, PROFILES, "profile", "--profile", ProfileError)
    return Profile.from_dict(data, path.stem)


@dataclass(frozen=True)
class Resources:
    """What one run asks SLURM for."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int     # GPUs allocated on each node (= tasks_per_node on GPU profiles)
    cpus_per_task: int
    mem: str | None
    time_min: int

    @property
    def ranks(self) -> int:
        return self.nodes * self.tasks_per_node


def resources(profile: Profile, nproc: int, *, nodes: int | None = None, time: str | int | None = None) -> Resources:
    """Split `nproc` ranks into nodes x tasks per node on `profile`'s nodes, one task per GPU."""
    integer("--nproc", nproc, minimum=1, error=ProfileError)
    per_node = profile.gpus_per_node or profile.tasks_per_node or nproc
    unit = "GPUs" if profile.gpus_per_node else "tasks"
    if nodes is None:
        nodes = math.ceil(nproc / per_node)
    integer("--nodes", nodes, minimum=1, error=ProfileError)
    if nproc % nodes:
        raise ProfileError("--nproc", f"{nproc} ranks do not split evenly over {nodes} node(s); use a multiple "
                           f"of {nodes}, or a multiple of {per_node} ({unit} per node on profile {profile.name!r})")
    tasks = nproc // nodes
    if tasks > per_node:
        field_name = "gpus_per_node" if profile.gpus_per_node else "tasks_per_node"
        raise ProfileError(field_name, f"{nproc} ranks on {nodes} node(s) need {tasks} {unit} per node; "
                           f"profile {profile.name!r} has {field_name}={per_node}")
    try:
        time_min = profile.time_min if time is None else time_minutes(time)
    except ValueError:
        raise ProfileError("--time", f"got {time!r}; expected minutes or [D-]HH:MM:SS, at least 1 minute") from None
    return Resources(nodes=nodes, tasks_per_node=tasks, gpus_per_node=tasks if profile.gpus_per_node else 0,
                     cpus_per_task=profile.cpus_per_task, mem=profile.mem, time_min=time_min)


LAUNCHER_TYPES = ("slurm", "local", "debug")


def launcher_resources(launcher_type: str, profile_name: str | Path | None, nproc: int, *, nodes: int | None = None,
                       time: str | int | None = None, prefix: str = "--") -> tuple[Profile | None, Resources | None]:
    """What a launcher submits with: (the profile sbatch needs, the resources of each run).

    slurm: `profile_name` is required (a name in slurm/profiles or a .yaml path); returns (profile, resources).
    local: this machine, as the 'local' profile (or `profile_name`) describes it, on one node unless
    `nodes` says otherwise; returns (None, resources), as the local launcher takes no profile.
    debug: one rank in this process; returns (None, None) and checks nothing.
    Mistakes raise ProfileError naming the CLI flag ("--profile", "--nproc", "--nodes", "--time") or the
    profile's field; with another `prefix` (e.g. "launcher." for a sweep spec) every field is
    `prefix + name` instead ("launcher.profile", "launcher.nproc", "launcher.gpus_per_node").
    """
    try:
        if launcher_type not in LAUNCHER_TYPES:
            raise ProfileError("--launcher" if prefix == "--" else "--type",  # --type: the spec's launcher.type
                               f"got {launcher_type!r}; allowed values: {', '.join(map(repr, LAUNCHER_TYPES))}")
        if launcher_type == "debug":
            return None, None
        if launcher_type == "local":
            local = load_profile("local" if profile_name is None else profile_name)
            return None, resources(local, nproc, nodes=1 if nodes is None else nodes, time=time)
        if profile_name is None:
            who = "--launcher slurm" if prefix == "--" else "a slurm launcher"
            raise ProfileError("--profile", f"{who} needs a profile; available: {', '.join(available_profiles())} "
                                            f"(or a path to a .yaml file)")
        profile = load_profile(profile_name)
        return profile, resources(profile, nproc, nodes=nodes, time=time)
    except ProfileError as err:
        if prefix == "--":
            raise
        raise ProfileError(f"{prefix}{err.field.lstrip('-')}", err.message) from None
