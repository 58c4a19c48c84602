"""Every third-party module the project imports is declared in setup.py.

A fresh machine has only what `pip install -e ".[test]"` installs, so a module that happens to be
installed here by hand passes every local test and fails on a new clone. This test reads setup.py
itself (not the installed metadata, which is only refreshed by a reinstall) and every import under
the folders users run: the package, its tests, the benchmarks and the export script. The
maintainers' own tools (tools/, which regenerate bundled resources) list their needs in their
docstrings and are not checked.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("rald_fast", "bench", "export", "tests")
# import name -> distribution name, for the few that differ
DISTRIBUTION = {"cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn",
                "skimage": "scikit-image", "pytest_benchmark": "pytest-benchmark", "onnx_ir": "onnx-ir",
                "torch_tensorrt": "torch-tensorrt", "google": "protobuf"}
# optional GPU back-ends: imported only inside guards, declared in the `tensorrt` extra
OPTIONAL = {"tensorrt", "torch_tensorrt", "pycuda"}
# installed by a declared distribution (torch's CUDA wheels bring triton; pip brings setuptools)
IMPLIED = {"triton", "setuptools", "pkg_resources"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return _norm(re.split(r"[<>=!~;\[\s]", spec.strip(), maxsplit=1)[0])


def declared(setup_py: Path) -> dict[str, set[str]]:
    """{"install": {...}, extra: {...}} distribution names from the literal lists in setup()."""
    tree = ast.parse(setup_py.read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: k.value for k in call.keywords}
    out = {"install": {_requirement_name(s) for s in ast.literal_eval(kw["install_requires"])}}
    for extra, specs in ast.literal_eval(kw.get("extras_require", ast.Dict([], []))).items():
        out[extra] = {_requirement_name(s) for s in specs}
    return out


def _local_modules(path: Path) -> set[str]:
    """Modules a file can import without installing anything: top-level folders of the repository,
    and, outside packages, sibling files (bench/ and tests/ scripts import their own helpers)."""
    local = {p.name for p in ROOT.iterdir() if p.is_dir()}
    if not (path.parent / "__init__.py").exists():
        local |= {p.stem for p in path.parent.glob("*.py")}
    return local


def imports(folders=CHECKED) -> dict[str, str]:
    """Third-party top-level module -> the first file importing it (also `pytest.importorskip`)."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            local = _local_modules(path)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip"
                      and node.args and isinstance(node.args[0], ast.Constant)):
                    names = [node.args[0].value]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in local and top != "__future__":
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def undeclared(found: dict[str, str], deps: dict[str, set[str]]) -> list[str]:
    required = deps["install"] | deps.get("test", set())
    optional = set().union(*(v for k, v in deps.items() if k not in ("install", "test")))
    missing = []
    for module, where in sorted(found.items()):
        dist = _norm(DISTRIBUTION.get(module, module))
        if module in IMPLIED:
            continue
        if module in OPTIONAL:
            if dist not in optional:
                missing.append(f"{module} ({where}): optional back-end, not in any extra of setup.py")
        elif dist not in required:
            missing.append(f"{module} ({where}): distribution {dist!r} not in install_requires or [test]")
    return missing


def test_every_import_is_declared():
    missing = undeclared(imports(), declared(ROOT / "setup.py"))
    assert not missing, "imported but not declared in setup.py:\n" + "\n".join(missing)


def test_the_check_catches_a_missing_dependency():
    """The checker itself can fail: drop one declared distribution and it is reported."""
    deps = declared(ROOT / "setup.py")
    found = imports()
    assert "sklearn" in found and "scikit-learn" in deps["install"]
    deps["install"] = deps["install"] - {"scikit-learn"}
    assert [m for m in undeclared(found, deps) if m.startswith("sklearn")]
    deps = declared(ROOT / "setup.py")
    deps["tensorrt"] = set()
    assert [m for m in undeclared(found, deps) if m.startswith("tensorrt")]


def test_optional_backends_are_guarded():
    """The optional back-ends are imported only inside functions (never at a module's top level),
    so the package imports without them."""
    for folder in ("rald_fast", "export"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not any(n.split(".")[0] in OPTIONAL for n in names), \
                    f"{path.relative_to(ROOT)} imports an optional back-end at module level"
