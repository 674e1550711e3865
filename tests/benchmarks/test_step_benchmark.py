"""benchmarks.step's function API (what benchmarks.suite calls): the rows a device gets, and one
row timed on its own with no graph compiled during its timed steps."""

import torch

from benchmarks import step
from fastssl.config import parse


def quick_cfg(*extra):
    return parse(step.StepConfig, ["--quick", *extra])


def test_settings_on_cpu_skip_cuda_graphs_and_modes_without_inductor():
    run, skipped = step.settings(quick_cfg(), torch.device("cpu"))
    assert len(run) == 8 + 2  # the grid, then LARS loop and compiled on the fastest setting
    assert {(s["mode"], s["optimizer"]) for s in run[8:]} == {("default", "loop"), ("default", "compiled")}
    reasons = {s["mode"]: s["status"] for s in skipped}
    assert set(reasons) == {"max-autotune-no-cudagraphs", "reduce-overhead"}
    assert "CUDA" in reasons["reduce-overhead"] and "inductor" in reasons["max-autotune-no-cudagraphs"]
    run, skipped = step.settings(
        quick_cfg("--compile-modes", "default", "--optimizer-paths", "foreach", "--precisions", "fp32"),
        torch.device("cpu"),
    )
    assert len(run) == 4 and not skipped and not any(s["bf16"] for s in run)


def test_run_setting_times_one_row_without_recompiling():
    cfg = quick_cfg("--repeats", "1", "--steps", "2")
    setting = dict(compile=True, channels_last=True, bf16=False, mode="default", optimizer="compiled")
    rec = step.run_setting(setting, cfg, torch.device("cpu"))
    assert rec["status"] == "ok" and rec["setting"] == "compiled + channels_last + fp32 + LARS compiled"
    assert rec["img_per_s"]["median"] > 0 and rec["tflops"] > 0
    assert rec["graphs_timed"] == 0  # a steady-state step never recompiles
