"""benchmarks.preflight and what the suite does with it: a compile that does not work costs seconds
and turns into eager rows that say so; CUDA graphs that inductor declined are labelled "not
engaged" with its reason, never "CUDA graphs"."""

import stat
import time
from types import SimpleNamespace

import pytest

from benchmarks import nt_xent, preflight, suite, suite_stages
from benchmarks import step as step_bench


def fake_python(tmp_path, body):
    path = tmp_path / "python3"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_compile_check_reports_the_failure_line_and_gives_up_on_time(tmp_path):
    broken = fake_python(
        tmp_path,
        'echo "Traceback (most recent call last):" >&2; '
        'echo "torch._inductor.exc.InductorError: RuntimeError: Failed to find C compiler." >&2; exit 1',
    )
    got = preflight.compile_check("cuda", timeout=30, python=broken)
    assert (
        not got["ok"]
        and got["reason"] == "torch._inductor.exc.InductorError: RuntimeError: Failed to find C compiler."
    )
    hung = fake_python(tmp_path, "sleep 30")
    t0 = time.monotonic()
    got = preflight.compile_check("cuda", timeout=0.5, python=hung)
    assert time.monotonic() - t0 < 5 and not got["ok"] and "still running after" in got["reason"]
    missing = preflight.compile_check("cuda", python=str(tmp_path / "nope"))
    assert not missing["ok"] and "could not start" in missing["reason"]


def smoke_context(tmp_path, *flags):
    cfg = suite.parse(suite.SuiteConfig, ["--smoke", "--out", str(tmp_path), *flags])
    ctx = suite.Context(cfg, suite.common.resolve_device("cpu"), {}, str(tmp_path))
    return ctx


def test_a_failed_compile_check_turns_compilation_off(tmp_path, monkeypatch):
    ctx = smoke_context(tmp_path)
    ctx.sizes["compile_backend"] = "inductor"  # where the suite would generate code
    monkeypatch.setattr(
        preflight, "compile_check", lambda *a, **k: {"ok": False, "reason": "no libcuda", "seconds": 1.0}
    )
    c = suite.decide_compile(ctx)
    assert (
        c["enabled"] is False and c["reason"] == "compile check failed: no libcuda" and not ctx.train_compile
    )
    ctx = smoke_context(tmp_path, "--compile")  # forced on: no check
    monkeypatch.setattr(preflight, "compile_check", lambda *a, **k: pytest.fail("checked although --compile"))
    assert suite.decide_compile(ctx)["enabled"] is True


class FakeStep:
    """Stands in for a built training step; with cudagraphs=True it declines CUDA graphs the way
    inductor does (a logged warning and a counter, no exception)."""

    def __init__(self, cudagraphs):
        self.cudagraphs = cudagraphs
        self.optimizer = SimpleNamespace(step=lambda: None)

    def __call__(self, batch):
        if self.cudagraphs:
            from torch._inductor.cudagraph_utils import log_cudagraph_skip_and_bump_counter

            log_cudagraph_skip_and_bump_counter("skipping cudagraphs due to mutated inputs (2 instances)")
        time.sleep(0.001)

    def flops(self, batch):
        return 1


def test_cuda_graphs_that_inductor_skipped_are_labelled_not_engaged(tmp_path, monkeypatch):
    ctx = smoke_context(tmp_path)
    monkeypatch.setattr(suite_stages, "_skip_reason", lambda *a, **k: "")  # let the CUDA-graphs row run here
    monkeypatch.setattr(
        step_bench, "build", lambda setting, scfg, device: FakeStep(setting["mode"] == "reduce-overhead")
    )
    rows = {r["setting"]: r for r in suite_stages.step_ablation(ctx, lambda: False)["rows"]}
    graphs = rows["+ CUDA graphs (not engaged)"]
    assert graphs["status"] == "not engaged: skipping cudagraphs due to mutated inputs (2 instances)"
    assert all(r["status"] == "ok" for name, r in rows.items() if "CUDA graphs" not in name)
    with preflight.cudagraph_watch() as w:
        FakeStep(False)(None)
    assert w.engaged and w.reason == ""


def test_no_compile_runs_eager_and_labels_every_affected_row(tmp_path, monkeypatch):
    ctx = smoke_context(tmp_path, "--no-compile")
    assert ctx.compile == {"enabled": False, "reason": "--no-compile", "check": None}
    built = []
    monkeypatch.setattr(
        step_bench, "build", lambda setting, scfg, device: built.append(setting) or FakeStep(False)
    )
    rows = {r["setting"]: r for r in suite_stages.step_ablation(ctx, lambda: False)["rows"]}
    assert rows["+ torch.compile"]["status"] == "skipped: not compiled (--no-compile)"
    assert rows["+ CUDA graphs"]["status"] == "skipped: not compiled (--no-compile)"
    eager = rows["+ fast optimiser (eager)"]
    assert eager["status"] == "ok" and eager["compile"] is False
    assert not any(s["compile"] for s in built)  # nothing was compiled
    assert "torch.compile: **off" in suite.suite_report.compile_line({"compile": ctx.compile})
    assert "--no-compile" in suite_stages.pretrain_argv(ctx, 1, str(tmp_path / "run"))
    assert suite.parse(nt_xent.NTXentConfig, ["--quick", "--modes", "eager"]).mode_list == ["eager"]
    with pytest.raises(ValueError):
        suite.parse(nt_xent.NTXentConfig, ["--modes", "fast"])
