"""The architecture, checked: imports point down. Parsed from the source (ast), nothing imported.

- `pipelines` (the data layer) never imports `fastssl` or `benchmarks`; `fastssl` never imports
  `benchmarks`.
- No import circle among the modules of `pipelines`, `fastssl` and `benchmarks`.
- The circle check counts imports inside functions too, so none can hide a circle; in `pipelines`
  its own modules are imported at the top of a file only (optional libraries are imported where
  they are used, behind a guard, and are not the project's modules).
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("pipelines", "fastssl", "benchmarks")
LAYERS = {"pipelines": set(), "fastssl": {"pipelines"}, "benchmarks": {"pipelines", "fastssl"}}


def modules() -> dict:
    """{dotted module name: path} of every .py file of the packages (results folders excluded)."""
    out = {}
    for package in PACKAGES:
        for folder, subdirs, files in os.walk(os.path.join(ROOT, package)):
            subdirs[:] = sorted(d for d in subdirs if d not in ("results", "__pycache__"))
            for f in sorted(files):
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                    out[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, f)
    return out


def _resolve(name: str, node: ast.ImportFrom, known) -> list:
    """The project modules an `import`/`from ... import` names (a `from pkg import mod` names mod)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] in PACKAGES]
    base = name.split(".") if node.level == 0 else None
    if node.level:
        is_package = known[name].endswith("__init__.py")
        parts = name.split(".")
        base = parts[: len(parts) - node.level + (1 if is_package else 0)]
        base = base + (node.module.split(".") if node.module else [])
    else:
        base = node.module.split(".")
    if base[0] not in PACKAGES:
        return []
    target = ".".join(base)
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
    return subs + ([target] if len(subs) < len(node.names) else [])


def imports() -> dict:
    """{module: [(imported module, line, at top level)]} for the project's own modules."""
    known = modules()
    graph = {}
    for name, path in known.items():
        tree = ast.parse(open(path).read(), path)
        top = {id(n) for n in tree.body} | {
            id(c) for n in tree.body if isinstance(n, (ast.If, ast.Try)) for c in ast.walk(n)
        }
        edges = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges += [(t, node.lineno, id(node) in top) for t in _resolve(name, node, known)]
        graph[name] = edges
    return graph


def test_layers_point_down():
    wrong = [
        f"{m} imports {t} (line {line})"
        for m, edges in imports().items()
        for t, line, _ in edges
        if t.split(".")[0] != m.split(".")[0] and t.split(".")[0] not in LAYERS[m.split(".")[0]]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    graph = {
        m: {t for t, _, _ in edges if t != m and not m.startswith(t + ".")} for m, edges in imports().items()
    }
    done, path, circles = set(), [], []

    def visit(m):  # depth-first; a module met again on the current path closes a circle
        if m in path:
            circles.append(" -> ".join(path[path.index(m) :] + [m]))
            return
        if m in done:
            return
        path.append(m)
        for t in sorted(graph.get(m, ())):
            visit(t)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    assert not circles, "\n".join(circles)


def test_pipelines_imports_its_own_modules_at_the_top():
    inner = [
        f"{m} line {line}: {t}"
        for m, edges in imports().items()
        for t, line, top in edges
        if not top and m.split(".")[0] == "pipelines"
    ]
    assert not inner, "\n".join(inner)


@pytest.mark.parametrize("bad", ["circle", "hidden circle", "upward", "inner"])
def test_the_checks_can_fail(bad, tmp_path, monkeypatch):
    """The checks above see a planted circle (also one closed inside a function), a planted upward
    import and a planted function-level import in pipelines."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    if bad in ("circle", "hidden circle"):
        (tmp_path / "fastssl" / "a.py").write_text("from . import b\n")
        inner = "def f():\n    from .a import x\n" if bad == "hidden circle" else "from .a import x\n"
        (tmp_path / "fastssl" / "b.py").write_text(inner)
    elif bad == "upward":
        (tmp_path / "pipelines" / "a.py").write_text("import fastssl\n")
    else:
        (tmp_path / "pipelines" / "a.py").write_text("def f():\n    from . import b\n")
        (tmp_path / "pipelines" / "b.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    check = {
        "circle": test_no_import_circle,
        "hidden circle": test_no_import_circle,
        "upward": test_layers_point_down,
        "inner": test_pipelines_imports_its_own_modules_at_the_top,
    }[bad]
    with pytest.raises(AssertionError):
        check()
