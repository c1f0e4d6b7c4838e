"""Validation shared by every layer: `ConfigError` and the checkers that raise it.

Each checker takes the field's name (a RunConfig path such as "dino.local_crops", a spec key such as
"launcher.nproc", a CLI flag such as "--nproc", or a constructor argument), checks one value, and
returns it (normalised where noted); a bad value raises `error(field, "got ...; must be ...")`.
`error` is ConfigError or a subclass (ProfileError, SpecError); `note` is appended in parentheses.
Bools are never numbers here, although Python's bool subclasses int.

This module imports only the standard library, yaml and `scaling.schema`, never torch.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from scaling.schema import finite_number

__all__ = ["ConfigError", "choice", "finite_number", "flag", "integer", "load_named_yaml", "mapping", "number",
           "pair", "plain", "text", "yaml_problem", "yaml_value"]


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what is allowed."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        self.message = message
        super().__init__(f"{field_name}: {message}")


def load_named_yaml(name_or_path: str | Path, folder: Path, what: str, field_name: str,
                    error: type[ConfigError] = ConfigError) -> tuple[Path, Any]:
    """A YAML file given by path, or by name in `folder` (NAME.yaml): (its path, its content).

    Raises `error(field_name, ...)` listing the names available when there is no such file, or
    when it is not valid YAML.
    """
    path = Path(name_or_path)
    if not path.is_file() and (folder / f"{name_or_path}.yaml").is_file():
        path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise error(field_name, f"no {what} {str(name_or_path)!r}; available: {names} (or a path to a .yaml file)")
    try:
        return path, yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise error(field_name, f"{path} is not valid YAML: {yaml_problem(err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(field_name, f"cannot read {path}: {err}") from None


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what is wrong and where (line, column), without the echoed source."""
    problem = getattr(err, "problem", None)
    if not problem:
        return " ".join(str(err).split())
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    context = getattr(err, "context", None)
    return f"{context}: {problem}{where}" if context else f"{problem}{where}"


def yaml_value(value: Any) -> str:
    """`value` as the text of a `key=value` override: YAML that reads back as the same value.

    Strings stay strings ('true', 'null', '' and 'a: b' are quoted), floats keep every digit, and
    tuples are written as lists (a RunConfig stores lists as tuples).
    """
    return yaml.safe_dump(plain(value), default_flow_style=True).strip().removesuffix("...").strip()


def plain(value: Any) -> Any:
    """`value` as plain YAML data: dicts stay dicts, tuples and lists become lists, all the way down."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------- checkers
def _fail(error: type[ConfigError], field: str, message: str, note: str) -> NoReturn:
    raise error(field, message + (f" ({note})" if note else ""))


def _bounds(minimum: Any, maximum: Any, exclusive_minimum: Any, exclusive_maximum: Any) -> str:
    """' >= 0', ' < 1', ' in [0.0, 1.0)' or '' for the requirement text."""
    lo, lo_open = (exclusive_minimum, True) if exclusive_minimum is not None else (minimum, False)
    hi, hi_open = (exclusive_maximum, True) if exclusive_maximum is not None else (maximum, False)
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


def _numeric(value: Any, types: type | tuple[type, ...]) -> bool:
    """An instance of `types` but not a bool: bool subclasses int, yet True is no count or size."""
    return isinstance(value, types) and not isinstance(value, bool)


def _within(value: Any, minimum: Any, maximum: Any, exclusive_minimum: Any, exclusive_maximum: Any) -> bool:
    return ((minimum is None or value >= minimum) and (maximum is None or value <= maximum)
            and (exclusive_minimum is None or value > exclusive_minimum)
            and (exclusive_maximum is None or value < exclusive_maximum))


def integer(field: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
            exclusive_minimum: int | None = None, error: type[ConfigError] = ConfigError, note: str = "") -> int:
    """An int (not a bool) within the bounds."""
    bounds = (minimum, maximum, exclusive_minimum, None)
    if not _numeric(value, int) or not _within(value, *bounds):
        _fail(error, field, f"got {value!r}; must be an integer{_bounds(*bounds)}", note)
    return value


def number(field: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
           exclusive_minimum: float | None = None, exclusive_maximum: float | None = None, finite: bool = True,
           error: type[ConfigError] = ConfigError, note: str = "") -> float:
    """An int or float (not a bool) within the bounds, finite unless `finite=False`; returned as a float."""
    bounds = (minimum, maximum, exclusive_minimum, exclusive_maximum)
    kind = "a finite number" if finite else "a number"
    if not _numeric(value, (int, float)) or (finite and not math.isfinite(value)) or not _within(value, *bounds):
        _fail(error, field, f"got {value!r}; must be {kind}{_bounds(*bounds)}", note)
    return float(value)


def pair(field: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
         exclusive_minimum: float | None = None, error: type[ConfigError] = ConfigError,
         note: str = "") -> tuple[float, float]:
    """An ordered pair [lo, hi] of finite numbers with lo <= hi, both within the bounds; as a tuple of floats."""
    lower = f"{exclusive_minimum} < " if exclusive_minimum is not None else f"{minimum} <= " if minimum is not None else ""
    upper = f" <= {maximum}" if maximum is not None else ""
    message = f"got {value!r}; must be [lo, hi] with {lower}lo <= hi{upper}"
    bounds = (minimum, maximum, exclusive_minimum, None)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2 \
            or not all(finite_number(v) and _within(v, *bounds) for v in value) or value[0] > value[1]:
        _fail(error, field, message, note)
    return float(value[0]), float(value[1])


def flag(field: str, value: Any, *, error: type[ConfigError] = ConfigError, note: str = "") -> bool:
    """True or False (not 0, 1 or 'yes')."""
    if not isinstance(value, bool):
        _fail(error, field, f"got {value!r}; must be true or false", note)
    return value


def choice(field: str, value: Any, allowed: Sequence[Any], *, error: type[ConfigError] = ConfigError,
           note: str = "") -> Any:
    """One of `allowed` (a bool matches only a bool, although True == 1)."""
    ok = value in allowed and (not isinstance(value, bool) or any(isinstance(a, bool) for a in allowed))
    if not ok:
        _fail(error, field, f"got {value!r}; allowed values: {', '.join(map(repr, allowed))}", note)
    return value


def text(field: str, value: Any, *, optional: bool = False, pattern: str | None = None,
         error: type[ConfigError] = ConfigError, note: str = "") -> str | None:
    """A non-empty string (matching `pattern` in full, when given); None only when `optional`."""
    if value is None and optional:
        return None
    if value is None:
        _fail(error, field, "is required: must be a non-empty string", note)
    if not isinstance(value, str) or not value.strip() or (pattern is not None and not re.fullmatch(pattern, value)):
        _fail(error, field, f"got {value!r}; must be a non-empty string" + (f" matching {pattern}" if pattern else ""),
              note)
    return value


def mapping(field: str, value: Any, *, optional: bool = True, error: type[ConfigError] = ConfigError,
            note: str = "") -> dict:
    """A dict (the value itself); None reads as {} when `optional`."""
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        _fail(error, field, f"must be a mapping, got {type(value).__name__}", note)
    return value
