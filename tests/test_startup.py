"""Fast starts: `transmed --help`, a config error and the old spellings answer without importing torch, timm or MONAI."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from transmed.commands import ALIASES, COMMANDS, spelling_of

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "monai", "torchvision", "wandb", "pandas", "matplotlib", "sklearn", "scipy")


def heavy_modules_after(code: str) -> list[str]:
    """The heavy libraries a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_commands_and_config_validation_import_no_heavy_library():
    code = """
import transmed, transmed.commands
from transmed.commands import main
from transmed.config import ConfigError, load_config
for name in transmed.commands.COMMANDS:
    transmed.commands.command_parser()
load_config("configs/demo.yaml", ["train.epochs=2"])
try:
    load_config("configs/demo.yaml", ["train.lr=abc"])
except ConfigError:
    pass
typo = ["--config", "configs/demo.yaml", "train.lrr=1"]
for argv in (["--help"], ["train", *typo], ["cv", *typo], ["inspect", "--out", "unused", *typo],
             *[[name, "--help"] for name in ("train", "evaluate", "cv", "inspect", "compare", "explain", "synthetic", "study", "robustness")]):
    try:
        main(argv)
    except SystemExit:
        pass
"""
    assert heavy_modules_after(code) == []


def test_public_api_is_imported_on_first_use():
    assert heavy_modules_after("import transmed; transmed.__version__") == []
    assert "torch" in heavy_modules_after("from transmed import TransMed, create_model, list_models, load_model")
    assert set(dir(__import__("transmed"))) >= {"TransMed", "create_model", "list_models", "load_model", "__version__"}


def test_every_old_spelling_is_one_row_of_the_table():
    """Each file an old spelling needs only calls `run_alias`; the table names every such file and a real command."""
    package = ROOT / "transmed"
    files = [ROOT / "train.py", ROOT / "evaluate.py", *sorted(package.glob("*.py")), package / "data" / "inspect.py"]
    shims = [f for f in files if "run_alias" in f.read_text()]
    assert sorted(spelling_of(str(f)) for f in shims) == sorted(ALIASES)
    assert set(ALIASES.values()) <= set(COMMANDS)
    for path in shims:
        body = [node for node in ast.parse(path.read_text()).body if not isinstance(node, ast.Expr) or not isinstance(node.value, ast.Constant)]
        assert len(body) == 2, f"{path}: an import and run_alias(__name__, __file__), nothing else"
        assert ast.unparse(body[1]) == "run_alias(__name__, __file__)", path


def test_an_old_spelling_runs_its_command_in_a_fresh_interpreter():
    result = subprocess.run([sys.executable, "-m", "transmed.data.inspect", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: inspect.py"), result.stderr
