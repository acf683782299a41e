"""The package's layers (docs/architecture.md) hold: every module imports, and imports point down only."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import transmed

PACKAGE = Path(transmed.__file__).parent
ROOT = PACKAGE.parent

# lower number = lower layer; a module may import its own package and lower layers only
LAYERS = {
    "core": 0,
    "config": 1,
    "models": 2,
    "data": 2,  # same height as models, and the two never import each other
    "engine": 3,
    "evaluation": 4,
    "deploy": 5,
    "experiments": 6,
    "commands": 7,
}
# the old `python -m transmed.X` spellings: each only runs a command
SHIMS = {"predict", "explain", "robustness", "compare", "synthetic", "ablate", "cv", "bench", "export", "weights", "data.inspect"}


def modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(transmed.__path__, "transmed."))


def layer_of(module: str) -> str:
    """`transmed.models.stem` -> `models`; the package's `__init__` is the public API, above everything."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "api"


def transmed_imports(module: str) -> set[str]:
    """Every `transmed.*` module `module` imports (absolute or relative, at any depth in the file)."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("transmed"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("transmed"):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """transmed module -> the transmed modules it imports, module level and inside functions alike;
    `from package import name` counts as importing the submodule `package.name` where there is one."""
    names = set(modules()) | {"transmed"}
    graph = {}
    for module in names:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(Path(spec.origin).read_text())
        package = module if spec.submodule_search_locations else module.rpartition(".")[0]
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in names)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, node.module] if node.module else base)
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in names else target)
        graph[module] = {edge for edge in edges if edge in names and edge != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` as a path that ends where it starts, or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycle_anywhere():
    """No module imports one that imports it back, directly or through others, at any depth in the file."""
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_every_module_imports():
    failures = {}
    for name in modules():
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - listed below
            failures[name] = f"{type(err).__name__}: {err}"
    assert not failures, failures


def test_imports_point_down_only():
    wrong = []
    for module in modules():
        if module.removeprefix("transmed.") in SHIMS:
            continue
        here = layer_of(module)
        for target in transmed_imports(module):
            there = layer_of(target)
            if here == "api" or there == here:
                continue
            if there not in LAYERS or here not in LAYERS or LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{module} ({here}) imports {target} ({there})")
    assert not wrong, "\n".join(wrong)


def test_shims_only_run_a_command():
    for shim in SHIMS:
        path = PACKAGE / (shim.replace(".", "/") + ".py")
        imports = transmed_imports(f"transmed.{shim}")
        assert imports and all(name.startswith("transmed.commands") for name in imports), (shim, imports)
        assert len(path.read_text().splitlines()) <= 8, f"{path} should stay a shim"


def test_no_module_name_exists_in_two_library_packages():
    """A library module's name says what it holds; the same name in two library layers is one concept written twice."""
    seen: dict[str, str] = {}
    clashes = []
    for module in modules():
        package, _, leaf = module.rpartition(".")
        if layer_of(module) not in LAYERS or layer_of(module) == "commands" or leaf.startswith("__"):
            continue
        if leaf in seen and seen[leaf] != package:
            clashes.append(f"{seen[leaf]}.{leaf} and {module}")
        seen.setdefault(leaf, package)
    assert not clashes, clashes


def test_transmed_help_lists_every_command():
    from transmed.commands import COMMANDS

    result = subprocess.run([sys.executable, "-m", "transmed.commands", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    for name in COMMANDS:
        assert f"  {name} " in result.stdout
    for name in COMMANDS:
        assert importlib.util.find_spec(f"transmed.commands.{name}") is not None, f"no module for command {name}"


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy, in-process: the module was imported above
@pytest.mark.parametrize(
    "spelling",
    [
        "train.py",
        "evaluate.py",
        *[f"-m transmed.{shim}" for shim in sorted(SHIMS)],
        *[f"transmed {name}" for name in ("train", "evaluate", "predict", "ablate", "cv", "study", "export", "weights", "bench")],
    ],
)
def test_every_spelling_still_works(spelling, monkeypatch, capsys):
    """Each spelling reaches its command's parser (run in this process: importing torch once keeps it fast)."""
    if spelling.startswith("transmed "):
        from transmed.commands import main

        run = lambda: main([spelling.split()[1], "--help"])  # noqa: E731
    elif spelling.startswith("-m "):
        module = spelling.split()[1]
        monkeypatch.setattr(sys, "argv", [module, "--help"])
        run = lambda: runpy.run_module(module, run_name="__main__", alter_sys=True)  # noqa: E731
    else:
        monkeypatch.setattr(sys, "argv", [spelling, "--help"])
        run = lambda: runpy.run_path(str(ROOT / spelling), run_name="__main__")  # noqa: E731
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")
