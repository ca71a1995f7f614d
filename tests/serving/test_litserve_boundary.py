"""LitServe is reached through server/litserve_bridge/ alone, so its dispatcher can be swapped there."""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "server"


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_only_the_bridge_imports_litserve():
    bridge = SERVER / "litserve_bridge"
    offenders = {
        str(path.relative_to(SERVER)): sorted(m for m in _imported_modules(path) if m == "litserve" or m.startswith("litserve."))
        for path in SERVER.rglob("*.py")
        if bridge not in path.parents
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}
