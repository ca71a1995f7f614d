"""The code's layout holds: small modules, rooms of at most 15, no import circles, imports only downwards.

Read from the source (ast), so a function-local or TYPE_CHECKING import counts as much as any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400
MAX_MODULES_PER_FOLDER = 15
# Packages and where they live: wire/ sits inside clients/ and is imported as `wire`.
PACKAGES = {"server": ROOT / "server", "optimizer_pipeline": ROOT / "optimizer_pipeline", "wire": ROOT / "clients" / "wire", "clients": ROOT / "clients"}
# Lower layers never import higher ones. The longest matching prefix decides a module's layer.
LAYERS = {
    "wire": 0,
    "optimizer_pipeline": 1,
    "server": 2, "server.settings": 2, "server.processes": 2, "server.errors": 2, "server.metrics": 2,
    "server.store": 3, "server.litserve_bridge": 3,
    "server.live": 4, "server.jobs": 4,
    "server.inference": 5,
    "server.http": 6, "server.oip_grpc": 6, "server.dataplane": 6,
    "server.app": 7,
    "server.main": 8, "server.__main__": 9,
    "clients": 10,  # the CLI: `optiserve serve` starts a server (imported when run)
}


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "clients" and parts[0] in ("wire", "build"):
                continue
            name = ".".join((package, *parts)).removesuffix(".__init__")
            modules[name] = path
    return modules


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The repository modules `name` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> int:
    prefix = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def test_no_module_is_over_the_line_limit():
    sources = [p for folder in ("server", "optimizer_pipeline", "clients", "bench", "tests") for p in (ROOT / folder).rglob("*.py") if "build" not in p.parts]
    too_long = {str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concern): {too_long}"


def test_no_folder_holds_more_than_fifteen_modules():
    folders = {p.parent for folder in ("server", "optimizer_pipeline", "clients", "bench", "tests") for p in (ROOT / folder).rglob("*.py") if "build" not in p.parts}
    crowded = {str(f.relative_to(ROOT)): n for f in folders if (n := len(list(f.glob("*.py")))) > MAX_MODULES_PER_FOLDER}
    assert not crowded, f"folders with more than {MAX_MODULES_PER_FOLDER} modules (make rooms): {crowded}"


def test_there_is_no_import_circle():
    # Tarjan's strongly connected components: any component of two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in GRAPH[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_the_layers_only(name: str):
    mine = _layer(name)
    upwards = sorted(t for t in GRAPH[name] if _layer(t) > mine)
    assert not upwards, f"{name} (layer {mine}) imports a higher layer: {[(t, _layer(t)) for t in upwards]}"


def test_the_check_sees_the_imports():
    # The graph is real: the app imports its routes, and a route table imports the errors.
    assert "server.http.routes" in GRAPH["server.app"]
    assert "server.errors" in GRAPH["server.http.routes"]
    assert "wire.contract.models" in GRAPH["server.http.routes"]
