"""The package's structure: every module imports on its own, the import graph has no cycle, no module
uses another's private names, and each formula has one owner (checked in the source)."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "detr_core"
SUBPACKAGES = ("models", "analysis", "io", "training")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) of every `import` / `from ... import` in a file, resolved to absolute names."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [a.name for a in node.names]
            for name in names:  # `from . import kernel` imports a module
                if f"{module}.{name}" in MODULES:
                    out.append((f"{module}.{name}", []))
            out.append((module, names))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        mod = _module_name(path)
        graph[mod] = {m for m, _ in _imports(path) if m in MODULES and m != mod}
    return graph


def test_every_subpackage_exists_and_says_what_it_holds():
    for sub in SUBPACKAGES:
        init = PACKAGE / sub / "__init__.py"
        assert init.is_file(), f"detr_core/{sub}/ is not a package"
        assert ast.get_docstring(ast.parse(init.read_text())), f"detr_core/{sub}/__init__.py has no docstring"
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "box_ops.py", "cli.py", "errors.py"], flat


def test_each_module_imports_on_its_own():
    # One fresh interpreter; before each module every detr_core module is forgotten, so an import that
    # only works after another module ran fails here (torch stays loaded: seconds, not minutes).
    script = (
        "import sys, importlib, traceback\n"
        f"mods = {[m for m in MODULES if not m.endswith('__main__')]!r}\n"
        "bad = []\n"
        "for m in mods:\n"
        "    for k in [k for k in sys.modules if k == 'detr_core' or k.startswith('detr_core.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception:\n"
        "        bad.append(m + ': ' + traceback.format_exc(limit=3))\n"
        "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules: importing a submodule runs the package's __init__
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if state.get(nxt) is None:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_graph_sees_known_edges():
    # The cycle test is only as good as the graph: it must see the imports that exist.
    graph = _graph()
    assert "detr_core.analysis.kernel" in graph["detr_core.analysis.attention"]
    assert "detr_core.models.weights" in graph["detr_core.models.zoo"]
    assert "detr_core.models.zoo" not in graph["detr_core.models.weights"]


def test_the_core_never_imports_streamlit_or_the_ui():
    for path in PACKAGE.rglob("*.py"):
        for module, _ in _imports(path):
            assert not module.startswith(("streamlit", "ui", "pages")), f"{path.relative_to(ROOT)} imports {module}"


def _python_files() -> list[Path]:
    return [p for d in ("detr_core", "ui", "pages", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")] + [
        ROOT / "app.py"
    ]


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in _python_files():
        for module, names in _imports(path):
            if not module.startswith(("detr_core", "ui")):
                continue
            offenders += [f"{path.relative_to(ROOT)}: {module}.{n}" for n in names if n.startswith("_")]
    assert not offenders, offenders


def test_the_attention_formula_has_one_owner():
    # exp(q . k - lse) rebuilt anywhere but analysis/kernel.py is a second copy of the formula.
    pattern = re.compile(r"exp\([^\n]*(@|matmul|einsum)[^\n]*-\s*\w*lse")
    owner = PACKAGE / "analysis" / "kernel.py"
    assert pattern.search(owner.read_text()), "the owner no longer matches the pattern: the test would pass vacuously"
    copies = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in _python_files()
        if p != owner and p.parent.name != "tests"
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not copies, copies


def test_one_recording_context():
    # The ContextVar that makes hooks thread-safe exists once, in analysis/recording.py.
    holders = [p.relative_to(ROOT) for p in PACKAGE.rglob("*.py") if "ContextVar(" in p.read_text()]
    assert holders == [Path("detr_core/analysis/recording.py")], holders


def test_public_api_is_what_the_library_is_for():
    import detr_core

    for name in ("analyze", "capture", "Analysis", "encoder_map", "decoder_map", "relevance", "load_model"):
        assert name in detr_core.__all__, name
        assert getattr(detr_core, name) is not None
    for name in detr_core.__all__:
        assert hasattr(detr_core, name), name
    importlib.reload(detr_core)
