"""Many-runs layer: a sweep spec (sweeps/*.yaml) — a base RunConfig, fixed overrides, grid and search
axes, the objective, a pruner, the storage and the launcher — validated in full before any job.

Grid axes enumerate trial points (one dict of axes, or a list of them whose products are joined);
search axes are Optuna distributions sampled by TPE. Every point is turned into a RunConfig at load
time, so a value the RunConfig rejects fails here, naming the axis.
"""
from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scaling.config import CONFIGS, RunConfig
from scaling.data.budget import PLANNED_MFU, PLANNED_PEAK_TFLOPS
from scaling.validate import ConfigError, choice, finite_number, integer, load_named_yaml, mapping, number, text, yaml_value
from slurm.profile import LAUNCHER_TYPES, ProfileError, launcher_resources

is_finite_number = finite_number  # its old name here; scaling.schema.finite_number is the one

SPEC_KEYS = ("name", "description", "base", "fixed", "per_method", "grid", "search", "trials", "objective",
             "pruner", "storage", "launcher", "retries", "dir", "seed", "estimate")
LAUNCHER_KEYS = ("type", "profile", "nproc", "nodes", "parallelism", "time")
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
    if len(args) != 2 or not all(finite_number(a) for a in args):
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
        return [f"{k}={yaml_value(v)}" for k, v in merged.items()]

    def run_config(self, params: dict[str, Any]) -> RunConfig:
        return RunConfig.load(self.base, self.overrides(params))

    def run_dir(self, params: dict[str, Any]) -> Path:
        return self.dir / "trials" / point_key(params)


def _mapping(key: str, value: Any) -> dict:
    return mapping(key, value, error=SpecError)


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
    name = text("name", raw.get("name") or path.stem, pattern=r"[A-Za-z0-9_.-]+", error=SpecError,
                note="use letters, digits, '_', '.', '-'")
    fixed, per_method = _overrides(raw)
    grid, search, trials = _axes(raw)
    metric, direction = _objective(raw)
    pruner, launcher = _pruner(raw), _launcher(raw, path)
    retries = integer("retries", raw.get("retries", 2), minimum=0, error=SpecError)
    seed = integer("seed", raw.get("seed", 0), error=SpecError, note="the sampler seed")
    estimate = _estimate(raw)
    sweep_dir = Path(raw.get("dir") or Path("runs") / "sweeps" / name)
    spec = SweepSpec(name=name, path=path.resolve(), base=_resolve_base(raw.get("base"), path), fixed=fixed,
                     per_method=per_method, grid=grid, search=search, trials=trials, metric=metric,
                     direction=direction, pruner=pruner, storage=raw.get("storage"), launcher=launcher,
                     retries=retries, dir=sweep_dir, seed=seed, estimate=estimate,
                     description=str(raw.get("description", "")))
    _check_run_configs(spec)
    if check_storage:
        from sweeps.storage import storage_problem

        problem = storage_problem(spec)
        if problem is not None:
            raise SpecError("storage", problem)
    return spec


def _overrides(raw: dict) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """`fixed` and `per_method`: the overrides every trial (of a method) gets."""
    fixed = _mapping("fixed", raw.get("fixed"))
    per_method = _mapping("per_method", raw.get("per_method"))
    for method, overrides in per_method.items():
        choice(f"per_method.{method}", method, ("vatt", "dino"), error=SpecError, note="the keys are methods")
        _mapping(f"per_method.{method}", overrides)
    return fixed, per_method


def _axes(raw: dict) -> tuple[tuple[dict[str, Any], ...], dict[str, Search], int]:
    """The grid points, the search axes, and the number of trials."""
    grid = _expand_grid(raw.get("grid"))
    search = {k: parse_search(k, v) for k, v in _mapping("search", raw.get("search")).items()}
    clash = sorted({k for p in grid for k in p} & set(search))
    if clash:
        raise SpecError(f"search.{clash[0]}", "is also a grid axis; an axis is either grid or search")
    trials = raw.get("trials")
    if search:
        return grid, search, integer("trials", trials, minimum=1, error=SpecError,
                                     note="a search sweep needs the number of trials")
    if trials is not None:
        raise SpecError("trials", "applies to search sweeps only; a grid sweep runs each grid point once")
    return grid, search, len(grid)


def _objective(raw: dict) -> tuple[str, str]:
    """(metric, direction); the direction defaults to minimize for the loss, else maximize."""
    objective = _mapping("objective", raw.get("objective"))
    bad = sorted(set(objective) - {"metric", "direction"})
    if bad:
        raise SpecError(f"objective.{bad[0]}", "unknown key; allowed keys: metric, direction")
    metric = choice("objective.metric", objective.get("metric", "knn_top1"), OBJECTIVE_METRICS, error=SpecError)
    direction = objective.get("direction", "minimize" if metric == "loss" else "maximize")
    return metric, choice("objective.direction", direction, DIRECTIONS, error=SpecError)


def _pruner(raw: dict) -> dict[str, Any]:
    pruner = dict(_mapping("pruner", raw.get("pruner")) or {"type": "none"})
    ptype = choice("pruner.type", pruner.get("type", "none"), PRUNERS, error=SpecError)
    bad = sorted(set(pruner) - {"type", *PRUNER_KEYS[ptype]})
    if bad:
        raise SpecError(f"pruner.{bad[0]}", f"unknown for a {ptype} pruner; allowed keys: "
                                            f"{', '.join(('type', *PRUNER_KEYS[ptype]))}")
    for key in PRUNER_KEYS[ptype]:
        if key in pruner:
            integer(f"pruner.{key}", pruner[key], minimum=0, error=SpecError)
    return pruner


def _launcher(raw: dict, spec_path: Path) -> dict[str, Any]:
    """The launcher, its profile and resources checked as `sweep submit` will ask for them."""
    launcher = dict(_mapping("launcher", raw.get("launcher")) or {"type": "local"})
    bad = sorted(set(launcher) - set(LAUNCHER_KEYS))
    if bad:
        raise SpecError(f"launcher.{bad[0]}", f"unknown key; allowed keys: {', '.join(LAUNCHER_KEYS)}")
    launcher.setdefault("type", "local")
    choice("launcher.type", launcher["type"], LAUNCHER_TYPES, error=SpecError)
    for key in ("nproc", "nodes", "parallelism"):
        integer(f"launcher.{key}", launcher.get(key, 1), minimum=1, error=SpecError)
    launcher.setdefault("nproc", 1)
    if "nodes" in launcher and launcher["type"] != "slurm" and launcher["nodes"] != 1:
        raise SpecError("launcher.nodes", f"got {launcher['nodes']}; the {launcher['type']} launcher runs on one node")
    if "profile" in launcher:
        launcher["profile"] = _relative(launcher["profile"], spec_path)
    if launcher["type"] == "slurm":
        try:
            launcher_resources("slurm", launcher.get("profile"), launcher["nproc"], nodes=launcher.get("nodes"),
                               time=launcher.get("time"), prefix="launcher.")
        except ProfileError as err:
            raise SpecError(err.field, err.message) from None
    return launcher


def _estimate(raw: dict) -> dict[str, float]:
    """The FLOP rate `sweep plan` turns FLOPs into GPU-hours with."""
    estimate = {"peak_tflops": PLANNED_PEAK_TFLOPS, "mfu": PLANNED_MFU, **_mapping("estimate", raw.get("estimate"))}
    bad = sorted(set(estimate) - set(ESTIMATE_KEYS))
    if bad:
        raise SpecError(f"estimate.{bad[0]}", f"unknown key; allowed keys: {', '.join(ESTIMATE_KEYS)}")
    number("estimate.peak_tflops", estimate["peak_tflops"], exclusive_minimum=0, error=SpecError)
    number("estimate.mfu", estimate["mfu"], exclusive_minimum=0, maximum=1, error=SpecError)
    return estimate


def _relative(value: str, spec_path: Path) -> str:
    candidate = spec_path.parent / str(value)
    return str(candidate.resolve()) if str(value).endswith((".yaml", ".yml")) and candidate.is_file() else str(value)


def check_data(spec: SweepSpec) -> None:
    """Refuse a spec whose trials read a real corpus that is not there (a shipped spec's placeholder
    paths, a typo): SpecError naming where the field is set, the field (data.path / data.eval_path)
    and the file. Only existence is asked here, so it is cheap; `scaling data check` reads the files."""
    from scaling.data.corpus import check_paths

    seen = set()
    for point in spec.grid:
        params = {**point, **{k: s.corners()[0] for k, s in spec.search.items()}}
        cfg = spec.run_config(params)
        corpus = (cfg.data.source, cfg.data.path, cfg.data.eval_path)
        if corpus in seen:
            continue
        seen.add(corpus)
        try:
            check_paths(cfg.data)
        except ConfigError as err:
            sources = (("grid", point), ("search", spec.search),
                       (f"per_method.{cfg.method}", spec.per_method.get(cfg.method, {})), ("fixed", spec.fixed))
            where = next((name for name, keys in sources if err.field in keys), "base")
            trial = f" (trial {params})" if where in ("grid", "search") else ""
            raise SpecError(f"{where}/{err.field}", err.message + trial) from None


def check_precision(spec: SweepSpec, gpus: bool | None) -> None:
    """Refuse, before any trial exists, a spec whose trials train in a precision their ranks' device
    cannot run (fp16 without a GPU: scaling.train.launch.check_precision), naming where it is set.
    `gpus`: whether the launcher's ranks run on GPUs (None: on this machine)."""
    from scaling.train.launch import check_precision as check_run_precision

    corners = [dict(zip(spec.search, combo)) for combo in itertools.product(*(s.corners() for s in spec.search.values()))] \
        if spec.search else [{}]
    for point in spec.grid:
        for corner in corners[:64]:
            params = {**point, **corner}
            cfg = spec.run_config(params)
            try:
                check_run_precision(cfg, gpus)
            except ConfigError as err:
                sources = (("grid", point), ("search", spec.search),
                           (f"per_method.{cfg.method}", spec.per_method.get(cfg.method, {})), ("fixed", spec.fixed))
                where = next((name for name, keys in sources if err.field in keys), "base")
                raise SpecError(f"{where}/{err.field}", err.message + (f" (trial {params})" if where in
                                                                         ("grid", "search") else "")) from None


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
