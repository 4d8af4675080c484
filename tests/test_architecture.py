"""The layout of docs/architecture.md, kept true.

- the import contracts in pyproject.toml (import-linter: layers, no cycles, one home per
  fragile dependency) hold, and every top-level module of the package is in a layer;
- the layers drawn in docs/architecture.md are the contract's, in its order, and every module
  the page names exists;
- no module above ~500 lines, no function above ~80 (data tables excepted);
- the control API's public signatures (client, request/answer models, control routes) name
  no ``Any``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "studioctl"
DOC = REPO / "docs" / "architecture.md"

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# Functions that are data tables (one statement per row), not logic.
DATA_TABLES: set[str] = set()


def contract_layers() -> list[list[str]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [[m.strip() for m in layer.split("|")] for layer in layers["layers"]]


def test_the_import_contracts_hold() -> None:
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(no_cache=True, no_logo=True))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    kept = re.search(r"Contracts: (\d+) kept, (\d+) broken", r.stdout)
    assert kept is not None and int(kept.group(2)) == 0 and int(kept.group(1)) >= 8, r.stdout


def test_the_contracts_have_no_ignores() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert not [c["id"] for c in config["contracts"] if c.get("ignore_imports")]


def test_every_top_level_module_has_a_layer() -> None:
    named = {m for layer in contract_layers() for m in layer}
    tops = {
        f"studioctl.{m.name}"
        for m in pkgutil.iter_modules([str(SRC)])
        if m.name not in ("__main__",)
    }
    assert tops - named == set(), "add these to a layer in pyproject.toml and the doc"
    assert named - tops == set(), "the contract names modules that do not exist"


def doc_layers() -> list[list[str]]:
    text = DOC.read_text()
    section = text.split("## Layers", 1)[1]
    block = re.search(r"```text\n(.*?)```", section, re.S)
    assert block is not None, "docs/architecture.md: no ```text block under ## Layers"
    rows = [r.split("#", 1)[0].strip() for r in block.group(1).splitlines()]
    return [[f"studioctl.{m.strip()}" for m in r.split("|")] for r in rows if r]


def test_the_doc_draws_the_contract_layers() -> None:
    assert doc_layers() == contract_layers()


def test_every_module_the_doc_names_exists() -> None:
    text = DOC.read_text()
    names = set(re.findall(r"`(studioctl(?:\.[a-z_]+)+)(?:\.[A-Za-z_]+\(?\)?)?`", text))
    assert names, "the doc names no module"
    missing = []
    for name in sorted(names):
        parts = name.split(".")
        # `studioctl.x.y.Name` or `studioctl.x.y.func()`: the longest prefix that is a module
        for k in range(len(parts), 1, -1):
            rel = Path(*parts[1:k])
            if (SRC / rel).with_suffix(".py").exists() or (SRC / rel / "__init__.py").exists():
                break
        else:
            missing.append(name)
    assert not missing


def source_files() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_and_functions_stay_small(path: Path) -> None:
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path.name}: split it by concern"
    long = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            if n > MAX_FUNCTION_LINES and node.name not in DATA_TABLES:
                long.append(f"{node.name}: {n} lines")
    assert not long


CONTROL_API = ["studioctl.client", "studioctl.api", "studioctl.control"]


def public_callables() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for root in CONTROL_API:
        mod = importlib.import_module(root)
        mods = [mod]
        if hasattr(mod, "__path__"):
            mods += [
                importlib.import_module(f"{root}.{m.name}")
                for m in pkgutil.iter_modules(mod.__path__)
            ]
        for m in mods:
            for name, obj in vars(m).items():
                if name.startswith("_") or getattr(obj, "__module__", None) != m.__name__:
                    continue
                if inspect.isfunction(obj):
                    out.append((f"{m.__name__}.{name}", obj))
                elif inspect.isclass(obj):
                    for attr, fn in vars(obj).items():
                        if not attr.startswith("_") and inspect.isfunction(fn):
                            out.append((f"{m.__name__}.{name}.{attr}", fn))
    return out


def test_the_control_api_names_no_any() -> None:
    found = public_callables()
    assert len(found) > 20  # the walk sees the client and the routes
    with_any = [
        name
        for name, fn in found
        if any(re.search(r"\bAny\b", str(a)) for a in getattr(fn, "__annotations__", {}).values())
    ]
    assert not with_any
