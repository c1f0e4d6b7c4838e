"""The house's layering: imports go down only (scaling <- slurm <- sweeps; analysis reads run
directories through scaling.schema alone), the entry point scaling.cli is the only module that
reaches every layer, and there are no import cycles."""
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("scaling", "slurm", "sweeps", "analysis", "benchmarks")
ENTRY = "scaling.cli"
# What each layer may import of the others (a module name, or a package and everything under it).
ALLOWED = {
    "scaling": set(),
    "slurm": {"scaling"},
    "sweeps": {"scaling", "slurm"},
    "analysis": {"scaling.schema"},
    "benchmarks": {"scaling", "slurm", "sweeps", "analysis"},
}


def modules(layer: str, root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted((root / layer).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != ENTRY and not name.startswith(ENTRY + ".") and parts[-1] != "__main__":
            out[name] = path
    return out


def imports_of(path: Path, name: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the file, lazy ones included."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.append((base, node.lineno, id(node) in top))
            found += [(f"{base}.{a.name}", node.lineno, id(node) in top) for a in node.names]
    return found


def allowed(layer: str, target: str) -> bool:
    if target == ENTRY or target.startswith(ENTRY + "."):
        return False
    other = target.split(".")[0]
    if other not in LAYERS or other == layer:
        return True
    # An allowed module's parent packages are loaded with it (scaling/__init__.py holds a docstring only).
    return any(target == a or target.startswith(a + ".") or a.startswith(target + ".") for a in ALLOWED[layer])


def upward_imports(root: Path = ROOT) -> list[str]:
    bad = []
    for layer in LAYERS:
        for name, path in modules(layer, root).items():
            for target, line, _ in imports_of(path, name):
                if target.split(".")[0] in LAYERS and not allowed(layer, target):
                    bad.append(f"{path.relative_to(root)}:{line} imports {target}")
    return bad


def loaded_by_import(layer: str, root: Path = ROOT) -> list[str]:
    """The modules of other layers that importing every module of `layer` loads, in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "for name in json.loads(sys.argv[1]): importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {LAYERS!r})))"
    )
    names = sorted(modules(layer, root))
    out = subprocess.run([sys.executable, "-c", code, json.dumps(names), str(root)], capture_output=True, text=True,
                         cwd=root, check=True).stdout
    return [m for m in json.loads(out.splitlines()[-1]) if m.split(".")[0] != layer and not allowed(layer, m)]


def test_every_import_goes_down_the_layers_lazy_ones_included():
    bad = upward_imports()
    assert not bad, "imports that reach up a layer:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer", LAYERS)
def test_importing_a_layer_loads_only_the_layers_below_it(layer):
    bad = loaded_by_import(layer)
    assert not bad, f"importing {layer} loaded {bad}"


def test_there_are_no_import_cycles():
    names = {n: p for layer in LAYERS for n, p in modules(layer).items()}
    names.update({n: p for n, p in _entry_modules().items()})
    graph = {n: {t for t, _, _ in imports_of(p, n) if t in names and t != n} for n, p in names.items()}
    # A package's __init__ importing its own submodules is not a cycle of its submodules back to it.
    cycles, state = [], {}

    def visit(n, stack):
        state[n] = "open"
        for t in sorted(graph[n]):
            if state.get(t) == "open" and not n.startswith(t + "."):
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _entry_modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "scaling" / "cli").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] != "__main__":
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


@pytest.mark.parametrize("layer", ["scaling", "analysis"])
def test_the_layering_checks_catch_a_forbidden_import(layer, tmp_path):
    """Not vacuous: in a copy of the tree, one planted import that reaches up fails both checks,
    whether it is lazy (only the static check sees it) or at module level (both see it)."""
    for name in LAYERS:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    assert upward_imports(tmp_path) == [] and loaded_by_import(layer, tmp_path) == []
    (tmp_path / layer / "planted_lazy.py").write_text("def f():\n    from sweeps import spec\n")
    assert upward_imports(tmp_path) == [f"{layer}/planted_lazy.py:2 imports sweeps",
                                        f"{layer}/planted_lazy.py:2 imports sweeps.spec"]
    (tmp_path / layer / "planted.py").write_text("import slurm.profile\n")
    assert f"{layer}/planted.py:1 imports slurm.profile" in upward_imports(tmp_path)
    assert "slurm.profile" in loaded_by_import(layer, tmp_path)
