"""fastssl's public names: imported on first use, the very objects of their modules, and each one
documented in docs/api.md with its real signature; the snippet that opens docs/api.md runs."""

import ast
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastssl

REPO = Path(__file__).resolve().parents[2]
API_DOC = REPO / "docs" / "api.md"


def test_import_fastssl_loads_neither_torch_nor_the_data_layer():
    code = (
        "import sys, fastssl; print(sorted(m for m in ('torch', 'numpy', 'pipelines') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", fastssl.EXPORTS)
def test_each_export_is_the_object_of_its_module(name):
    assert getattr(fastssl, name) is getattr(importlib.import_module(fastssl.EXPORTS[name]), name)
    assert name in dir(fastssl) and name in fastssl.__all__


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'nt_xnet'"):
        fastssl.nt_xnet
    from fastssl import nt_xent, simclr_view  # from-imports go through the same lookup

    assert callable(nt_xent) and callable(simclr_view)


def _documented() -> dict:
    """{name: signature text or None} of the list items "- `name(...)`" / "- `NAME`" of docs/api.md."""
    items = re.findall(r"^- `([A-Za-z_]\w*)(\([^`]*\))?`", API_DOC.read_text(), re.M)
    return {name: sig or None for name, sig in items}


def _parameters(signature: str) -> list:
    """[(name, kind, default)] of a signature written as Python, defaults evaluated."""
    args = ast.parse(f"def f{signature}: pass").body[0].args
    positional = args.posonlyargs + args.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(args.defaults)) + [
        eval(compile(ast.Expression(d), "<doc>", "eval")) for d in args.defaults
    ]
    out = [(a.arg, "positional", d) for a, d in zip(positional, defaults)]
    out += [("*" + args.vararg.arg, "var", None)] if args.vararg else []
    out += [(a.arg, "keyword", inspect.Parameter.empty) for a in args.kwonlyargs]
    return out + ([("**" + args.kwarg.arg, "var", None)] if args.kwarg else [])


def _actual(obj) -> list:
    kinds = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    out = []
    for p in inspect.signature(obj).parameters.values():
        if p.kind in kinds:
            out.append((kinds[p.kind] + p.name, "var", None))
        else:
            kind = "keyword" if p.kind == inspect.Parameter.KEYWORD_ONLY else "positional"
            out.append((p.name, kind, p.default))
    return out


def test_api_doc_lists_every_export_with_its_signature():
    documented = _documented()
    assert sorted(documented) == sorted(fastssl.__all__)
    for name, signature in documented.items():
        obj = getattr(fastssl, name)
        if signature is None:
            assert not callable(obj) or isinstance(obj, dict), f"{name}: document its signature"
        else:
            assert _parameters(signature) == _actual(obj), f"docs/api.md's signature of {name} is stale"


def test_api_doc_opens_with_a_snippet_that_runs(capsys):
    text = API_DOC.read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S)
    assert snippet and text.index("```python") < text.index("\n## "), "the doc should open with it"
    namespace = {}
    exec(compile(snippet.group(1), str(API_DOC), "exec"), namespace)
    assert torch.isfinite(namespace["loss"]) and namespace["view"].shape == (8, 3, 32, 32)
    assert capsys.readouterr().out.count("loss") == 2
