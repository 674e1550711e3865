"""Every library the code or its tests import is declared in setup.py (install_requires or an
extra, or required by one of those), so `pip install -e ".[all,dev]"` on a fresh machine gives a
suite that imports."""

import ast
import importlib.metadata
import re
import runpy
import sys
from pathlib import Path
from unittest import mock

import setuptools

REPO = Path(__file__).resolve().parents[1]
OURS = {"fastssl", "pipelines", "benchmarks", "tests", "conftest", "setuptools"}  # setuptools: setup.py's own


def imported(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def declared() -> set:
    with mock.patch.object(setuptools, "setup") as setup:
        runpy.run_path(str(REPO / "setup.py"))
    kw = setup.call_args.kwargs
    reqs = list(kw["install_requires"]) + [r for rs in kw["extras_require"].values() for r in rs]
    return {name(r) for r in reqs}


def name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; (]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def with_their_requirements(dists: set) -> set:
    """The declared distributions and what they require in turn (cv2 comes with ffcv, say)."""
    out = set(dists)
    for d in dists:
        try:
            out |= {name(r) for r in importlib.metadata.requires(d) or [] if "extra ==" not in r}
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def test_every_third_party_import_is_declared():
    files = [
        p
        for d in ("fastssl", "pipelines", "benchmarks", "scripts", "tests")
        for p in (REPO / d).rglob("*.py")
    ]
    local = {p.stem for p in files}  # modules imported by their own name beside them (tests' helpers)
    names = set().union(*(imported(p) for p in files)) - set(sys.stdlib_module_names) - OURS - local
    dists = importlib.metadata.packages_distributions()
    want = with_their_requirements(declared())
    missing = {
        n: dists.get(n, ["not installed"])
        for n in names
        if not any(d.lower().replace("_", "-") in want for d in dists.get(n, []))
    }
    assert not missing, f"imported but not declared in setup.py: {missing}"
    assert "psutil" in declared()  # the memory benchmark and its tests sample process trees with it
