"""Many-runs layer: a sweep spec (sweeps/*.yaml) — a base RunConfig, fixed overrides, grid and search
axes, the objective, a pruner, the storage and the launcher — validated in full before any job.

Grid axes enumerate trial points (one dict of axes, or a list of them whose products are joined);
search axes are Optuna distributions sampled by TPE. Every point is turned into a RunConfig at load
time, so a value the RunConfig rejects fails here, naming the axis.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scaling.config import CONFIGS, ConfigError, RunConfig, load_named_yaml

SPEC_KEYS = ("name", "description", "base", "fixed", "per_method", "grid", "search", "trials", "objective",
             "pruner", "storage", "launcher", "retries", "dir", "seed", "estimate")
LAUNCHER_KEYS = ("type", "profile", "nproc", "parallelism", "time")
LAUNCHER_TYPES = ("slurm", "local", "debug")
DIRECTIONS = ("maximize", "minimize")
PRUNERS = ("none", "median", "hyperband")
PRUNER_KEYS = {"none": (), "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
               "hyperband": ("min_resource", "max_resource", "reduction_factor")}
ESTIMATE_KEYS = ("peak_tflops", "mfu")
OBJECTIVE_METRICS = ("knn_top1", "knn_top5", "linear_top1", "v2t_r1", "v2t_r5", "v2t_r10", "t2v_r1", "t2v_r5",
                     "t2v_r10", "loss")
SPECS = Path(__file__).resolve().parent
_DIST = re.compile(r"^\s*(loguniform|uniform|int|logint|choice)\s*\((.*)\)\s*$")


class SpecError(ConfigError):
    """A sweep spec is invalid; the message names the key and what is allowed."""


@dataclass(frozen=True)
class Search:
    """One search axis: an Optuna distribution."""

    kind: str          # loguniform | uniform | int | logint | choice
    args: tuple

    def distribution(self):
        import optuna.distributions as d

        if self.kind == "choice":
            return d.CategoricalDistribution(list(self.args))
        if self.kind in ("int", "logint"):
            return d.IntDistribution(int(self.args[0]), int(self.args[1]), log=self.kind == "logint")
        return d.FloatDistribution(float(self.args[0]), float(self.args[1]), log=self.kind == "loguniform")

    def corners(self) -> list:
        """Values that bracket the distribution, to validate against the RunConfig."""
        return list(self.args) if self.kind == "choice" else [self.args[0], self.args[1]]


def parse_search(key: str, text: Any) -> Search:
    m = _DIST.match(str(text)) if isinstance(text, str) else None
    if not m:
        raise SpecError(f"search.{key}", f"got {text!r}; expected loguniform(lo, hi), uniform(lo, hi), int(lo, hi), "
                                         f"logint(lo, hi) or choice(a, b, ...)")
    kind = m.group(1)
    args = tuple(_scalar(a) for a in m.group(2).split(",") if a.strip())
    if kind == "choice":
        if not args:
            raise SpecError(f"search.{key}", "choice() needs at least one value")
        return Search(kind, args)
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise SpecError(f"search.{key}", f"{kind}() takes two numbers (lo, hi), got {text!r}")
    lo, hi = args
    if not lo < hi or (kind in ("loguniform", "logint") and lo <= 0):
        raise SpecError(f"search.{key}", f"needs lo < hi{' and lo > 0' if kind.startswith('log') else ''}, got {text!r}")
    if kind in ("int", "logint") and not (float(lo).is_integer() and float(hi).is_integer()):
        raise SpecError(f"search.{key}", f"{kind}() takes integers, got {text!r}")
    return Search(kind, (lo, hi))


def _scalar(text: str) -> Any:
    """One distribution argument: a number when it reads as one (YAML 1.1 misses '1e-5'), else YAML."""
    text = text.strip()
    try:
        number = float(text)
        return int(number) if re.fullmatch(r"[+-]?\d+", text) else number
    except ValueError:
        value = yaml.safe_load(text)
        return value


def point_key(params: dict[str, Any]) -> str:
    """A stable, readable name for a trial point: its run directory under the sweep."""
    parts = [f"{k.split('.')[-1]}{_short(v)}" for k, v in sorted(params.items())]
    digest = hashlib.sha1(repr(sorted(params.items())).encode()).hexdigest()[:6]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "-".join(parts))[:100] + f"-{digest}"


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    path: Path
    base: str | None
    fixed: dict[str, Any]
    per_method: dict[str, dict[str, Any]]
    grid: tuple[dict[str, Any], ...]               # the grid points, in order
    search: dict[str, Search]
    trials: int                                    # total trials (the grid size for pure grids)
    metric: str
    direction: str
    pruner: dict[str, Any]
    storage: str | None
    launcher: dict[str, Any]
    retries: int
    dir: Path
    seed: int
    estimate: dict[str, float] = field(default_factory=dict)
    description: str = ""

    @property
    def is_search(self) -> bool:
        return bool(self.search)

    def overrides(self, params: dict[str, Any]) -> list[str]:
        """The dotted overrides of one trial: fixed, then per-method, then the trial's own values."""
        method = params.get("method", self.fixed.get("method"))
        merged = {**self.fixed, **self.per_method.get(method, {}), **params,
                  "world_size": self.launcher.get("nproc", 1)}
        return [f"{k}={_yaml_value(v)}" for k, v in merged.items()]

    def run_config(self, params: dict[str, Any]) -> RunConfig:
        return RunConfig.load(self.base, self.overrides(params))

    def run_dir(self, params: dict[str, Any]) -> Path:
        return self.dir / "trials" / point_key(params)


def _yaml_value(v: Any) -> str:
    if isinstance(v, (list, dict)):
        return yaml.safe_dump(v, default_flow_style=True).strip()
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _mapping(key: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(key, f"must be a mapping, got {type(value).__name__}")
    return value


def _expand_grid(raw: Any) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ({},)
    blocks = raw if isinstance(raw, list) else [raw]
    if not blocks:
        raise SpecError("grid", "is empty; give at least one axis with values, or leave grid out")
    points: list[dict[str, Any]] = []
    seen = set()
    for i, block in enumerate(blocks):
        where = "grid" if not isinstance(raw, list) else f"grid[{i}]"
        if not isinstance(block, dict) or not block:
            raise SpecError(where, "must be a non-empty mapping of axis -> list of values")
        for axis, values in block.items():
            if not isinstance(values, list):
                raise SpecError(f"{where}.{axis}", f"must be a list of values, got {values!r}")
            if not values:
                raise SpecError(f"{where}.{axis}", "is empty; an axis needs at least one value")
            if len(set(map(repr, values))) != len(values):
                raise SpecError(f"{where}.{axis}", f"repeats a value: {values!r}")
        axes = list(block)
        for combo in itertools.product(*(block[a] for a in axes)):
            point = dict(zip(axes, combo))
            marker = repr(sorted(point.items()))
            if marker not in seen:
                seen.add(marker)
                points.append(point)
    return tuple(points)


def _resolve_base(base: Any, spec_path: Path) -> str | None:
    if base is None:
        return None
    if not isinstance(base, str):
        raise SpecError("base", f"must be a path to a RunConfig YAML, got {base!r}")
    for candidate in (spec_path.parent / base, Path(base), CONFIGS / base, CONFIGS / f"{base}.yaml"):
        if candidate.is_file():
            return str(candidate.resolve())
    raise SpecError("base", f"no RunConfig file {base!r} (relative to {spec_path.parent}, or a packaged config: "
                            f"{', '.join(sorted(p.stem for p in CONFIGS.glob('*.yaml')))})")


def load_spec(path: str | Path, *, check_storage: bool = True) -> SweepSpec:
    """Read and fully validate a sweep spec; nothing is created except (when asked) a storage probe."""
    path, raw = load_named_yaml(path, SPECS, "sweep spec", "spec", SpecError)
    raw = _mapping("spec", raw)
    unknown = sorted(set(raw) - set(SPEC_KEYS))
    if unknown:
        raise SpecError(unknown[0], f"unknown sweep spec key; allowed keys: {', '.join(SPEC_KEYS)}")
    name = raw.get("name") or path.stem
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SpecError("name", f"got {name!r}; use letters, digits, '_', '.', '-'")

    fixed = _mapping("fixed", raw.get("fixed"))
    per_method = _mapping("per_method", raw.get("per_method"))
    for method, overrides in per_method.items():
        if method not in ("vatt", "dino"):
            raise SpecError(f"per_method.{method}", "allowed methods: vatt, dino")
        _mapping(f"per_method.{method}", overrides)
    grid = _expand_grid(raw.get("grid"))
    search_raw = _mapping("search", raw.get("search"))
    search = {k: parse_search(k, v) for k, v in search_raw.items()}
    clash = sorted({k for p in grid for k in p} & set(search))
    if clash:
        raise SpecError(f"search.{clash[0]}", "is also a grid axis; an axis is either grid or search")

    trials = raw.get("trials")
    if search:
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise SpecError("trials", f"got {trials!r}; a search sweep needs the number of trials (an integer >= 1)")
    elif trials is not None:
        raise SpecError("trials", "applies to search sweeps only; a grid sweep runs each grid point once")
    else:
        trials = len(grid)

    objective = _mapping("objective", raw.get("objective"))
    bad = sorted(set(objective) - {"metric", "direction"})
    if bad:
        raise SpecError(f"objective.{bad[0]}", "unknown key; allowed keys: metric, direction")
    metric = objective.get("metric", "knn_top1")
    if metric not in OBJECTIVE_METRICS:
        raise SpecError("objective.metric", f"got {metric!r}; allowed values: {', '.join(OBJECTIVE_METRICS)}")
    direction = objective.get("direction", "minimize" if metric == "loss" else "maximize")
    if direction not in DIRECTIONS:
        raise SpecError("objective.direction", f"got {direction!r}; allowed values: {', '.join(DIRECTIONS)}")

    pruner = dict(_mapping("pruner", raw.get("pruner")) or {"type": "none"})
    ptype = pruner.get("type", "none")
    if ptype not in PRUNERS:
        raise SpecError("pruner.type", f"got {ptype!r}; allowed values: {', '.join(PRUNERS)}")
    bad = sorted(set(pruner) - {"type", *PRUNER_KEYS[ptype]})
    if bad:
        raise SpecError(f"pruner.{bad[0]}", f"unknown for a {ptype} pruner; allowed keys: "
                                            f"{', '.join(('type', *PRUNER_KEYS[ptype]))}")
    for key in PRUNER_KEYS[ptype]:
        if key in pruner and (isinstance(pruner[key], bool) or not isinstance(pruner[key], int) or pruner[key] < 0):
            raise SpecError(f"pruner.{key}", f"got {pruner[key]!r}; must be an integer >= 0")

    launcher = dict(_mapping("launcher", raw.get("launcher")) or {"type": "local"})
    bad = sorted(set(launcher) - set(LAUNCHER_KEYS))
    if bad:
        raise SpecError(f"launcher.{bad[0]}", f"unknown key; allowed keys: {', '.join(LAUNCHER_KEYS)}")
    launcher.setdefault("type", "local")
    if launcher["type"] not in LAUNCHER_TYPES:
        raise SpecError("launcher.type", f"got {launcher['type']!r}; allowed values: {', '.join(LAUNCHER_TYPES)}")
    for key in ("nproc", "parallelism"):
        value = launcher.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"launcher.{key}", f"got {value!r}; must be an integer >= 1")
    launcher.setdefault("nproc", 1)
    if launcher["type"] == "slurm":
        from slurm.profile import load_profile, resources

        if "profile" not in launcher:
            raise SpecError("launcher.profile", "a slurm launcher needs a cluster profile (name or .yaml path)")
        try:
            resources(load_profile(_relative(launcher["profile"], path)), launcher["nproc"], time=launcher.get("time"))
        except ConfigError as err:
            raise SpecError(f"launcher.{err.field.lstrip('-')}", str(err).split(": ", 1)[1]) from None
        launcher["profile"] = _relative(launcher["profile"], path)

    retries = raw.get("retries", 2)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise SpecError("retries", f"got {retries!r}; must be an integer >= 0")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SpecError("seed", f"got {seed!r}; the sampler seed must be an integer")
    estimate = {"peak_tflops": 989.0, "mfu": 0.4, **_mapping("estimate", raw.get("estimate"))}
    bad = sorted(set(estimate) - set(ESTIMATE_KEYS))
    if bad:
        raise SpecError(f"estimate.{bad[0]}", f"unknown key; allowed keys: {', '.join(ESTIMATE_KEYS)}")
    if not all(isinstance(v, (int, float)) and v > 0 for v in estimate.values()) or estimate["mfu"] > 1:
        raise SpecError("estimate", f"got {estimate!r}; peak_tflops > 0 and 0 < mfu <= 1")

    sweep_dir = Path(raw.get("dir") or Path("runs") / "sweeps" / name)
    spec = SweepSpec(name=name, path=path.resolve(), base=_resolve_base(raw.get("base"), path), fixed=fixed,
                     per_method=per_method, grid=grid, search=search, trials=trials, metric=metric,
                     direction=direction, pruner=pruner, storage=raw.get("storage"), launcher=launcher,
                     retries=retries, dir=sweep_dir, seed=seed, estimate=estimate,
                     description=str(raw.get("description", "")))
    _check_run_configs(spec)
    if check_storage:
        from sweeps.storage import check_storage as probe

        probe(spec)
    return spec


def _relative(value: str, spec_path: Path) -> str:
    candidate = spec_path.parent / str(value)
    return str(candidate.resolve()) if str(value).endswith((".yaml", ".yml")) and candidate.is_file() else str(value)


def _check_run_configs(spec: SweepSpec) -> None:
    """Build the RunConfig of every grid point (with each search axis at its bounds)."""
    if spec.pruner.get("type", "none") != "none":
        cfg = spec.run_config({**spec.grid[0], **{k: s.corners()[0] for k, s in spec.search.items()}})
        if not cfg.eval.every_steps:
            raise SpecError("pruner", "needs intermediate evaluations to prune on: set eval.every_steps in fixed")
    corners = [dict(zip(spec.search, combo)) for combo in itertools.product(*(s.corners() for s in spec.search.values()))] \
        if spec.search else [{}]
    if len(corners) > 64:
        corners = corners[:64]
    for point in spec.grid:
        for corner in corners:
            params = {**point, **corner}
            try:
                spec.run_config(params)
            except ConfigError as err:
                axis = err.field if err.field in params else None
                where = f"grid.{axis}" if axis in point else f"search.{axis}" if axis else "fixed"
                raise SpecError(where if axis else f"{where}/{err.field}",
                                f"the trial {params} is not a valid RunConfig: {err}") from None
            except FileNotFoundError as err:
                raise SpecError("base", str(err)) from None


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
