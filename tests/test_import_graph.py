"""The house's imports tell the truth: no import loop, no upward import, no hidden in-function import.

The graph is built from the source of `rald_fast/` (every `import`/`from ... import` of the package's
own modules, at the top of a file or inside a function; `if TYPE_CHECKING:` blocks excepted: they never
run) and held to the floors and the lazy-import list that docs/ARCHITECTURE.md declares.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rald_fast"
ARCHITECTURE = (ROOT / "docs" / "ARCHITECTURE.md").read_text()


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def room(module: str) -> str:
    """The folder (or root module) a module lives in: `rald_fast.data.cache` -> data."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "rald_fast"


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for each import of the package's own modules in `path`."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _type_checking(node)
            for n in ast.walk(node)}
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if id(child) in skip:
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets = []
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                targets = [f"{child.module}.{a.name}" if f"{child.module}.{a.name}" in known else child.module
                           for a in child.names]
            elif isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            found.extend((t, inner) for t in targets if t in known)
            visit(child, inner)
    visit(tree, False)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {t for t, _ in imports(p, known) if t != m} for m, p in known.items()}


def declared_floors() -> dict[str, int]:
    block = ARCHITECTURE.split("<!-- floors:begin -->")[1].split("<!-- floors:end -->")[0]
    floors = {}
    for floor, rooms in re.findall(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|$", block, re.M):
        for r in rooms.split(","):
            floors[r.strip()] = int(floor)
    return floors


def declared_lazy() -> dict[str, list[str]]:
    block = ARCHITECTURE.split("<!-- lazy:begin -->")[1].split("<!-- lazy:end -->")[0]
    return {f.strip(): [m.strip() for m in mods.split(",")]
            for f, mods in re.findall(r"^\|\s*(rald_fast/\S+)\s*\|\s*([^|]+?)\s*\|$", block, re.M)}


def test_no_import_loop():
    g = graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def walk(m):
        state[m] = 1
        path.append(m)
        for t in sorted(g[m]):
            if state.get(t) == 1:
                raise AssertionError("import loop: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state:
                walk(t)
        path.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            walk(m)


def test_every_import_points_down_the_declared_floors():
    floors = declared_floors()
    rooms = {room(m) for m in modules()} - {"rald_fast"}
    assert rooms <= set(floors), f"rooms without a floor in docs/ARCHITECTURE.md: {sorted(rooms - set(floors))}"
    bad = []
    for m, targets in graph().items():
        a = room(m)
        for t in targets:
            b = room(t)
            if a == b or a == "rald_fast" or b == "rald_fast":  # the package's own __init__ holds only a version
                continue
            if floors[a] <= floors[b]:
                bad.append(f"{m} (floor {floors[a]}) imports {t} (floor {floors[b]})")
    assert not bad, "imports that do not point down:\n" + "\n".join(sorted(bad))


def test_in_function_imports_are_only_the_declared_ones():
    known, lazy = modules(), declared_lazy()
    bad = []
    for path in known.values():
        rel = str(path.relative_to(ROOT))
        allowed = lazy.get(rel, [])
        for target, inner in imports(path, known):
            if inner and not any(target == a or (a.endswith(".*") and target.startswith(a[:-2])) for a in allowed):
                bad.append(f"{rel}: {target}")
    assert not bad, ("in-function imports of the package not declared in docs/ARCHITECTURE.md "
                     "('Imports'):\n" + "\n".join(sorted(bad)))


def test_the_checks_can_fail():
    """The graph sees in-function imports and the floors table is read (not vacuous)."""
    known = modules()
    inner = [t for t, i in imports(PACKAGE / "train" / "command.py", known) if i]
    assert "rald_fast.train.loop" in inner
    assert declared_floors()["kernels"] == 0 and declared_floors()["experiments"] == 5
