"""benchmarks.step's function API (what benchmarks.suite calls): the rows a device gets, and one
row timed on its own with no graph compiled during its timed steps."""

import torch

from benchmarks import step
from fastssl.config import parse


def quick_cfg(*extra):
    return parse(step.StepConfig, ["--quick", *extra])


def test_settings_on_cpu_skip_cuda_graphs_and_modes_without_inductor():
    run, skipped = step.settings(quick_cfg(), torch.device("cpu"))
    assert len(run) == 8 + 3  # the grid, then LARS loop and compiled and the online probe on the fastest
    assert {(s["mode"], s["optimizer"], s["probe"]) for s in run[8:]} == {
        ("default", "loop", False),
        ("default", "compiled", False),
        ("default", "foreach", True),
    }
    reasons = {s["mode"]: s["status"] for s in skipped}
    assert set(reasons) == {"max-autotune-no-cudagraphs", "reduce-overhead"}
    assert "CUDA" in reasons["reduce-overhead"] and "inductor" in reasons["max-autotune-no-cudagraphs"]
    run, skipped = step.settings(
        quick_cfg(
            "--compile-modes",
            "default",
            "--optimizer-paths",
            "foreach",
            "--precisions",
            "fp32",
            "--no-online-probe",
        ),
        torch.device("cpu"),
    )
    assert len(run) == 4 and not skipped and not any(s["bf16"] for s in run)


def test_run_setting_times_one_row_without_recompiling():
    cfg = quick_cfg("--repeats", "1", "--steps", "2")
    setting = dict(
        compile=True, channels_last=True, bf16=False, mode="default", optimizer="compiled", probe=False
    )
    rec = step.run_setting(setting, cfg, torch.device("cpu"))
    assert rec["status"] == "ok" and rec["setting"] == "compiled + channels_last + fp32 + LARS compiled"
    assert rec["img_per_s"]["median"] > 0 and rec["tflops"] > 0
    assert rec["graphs_timed"] == 0  # a steady-state step never recompiles


def test_the_online_probe_row_runs_the_probe_inside_the_compiled_step():
    cfg = quick_cfg("--repeats", "1", "--steps", "2")
    setting = dict(
        compile=True, channels_last=True, bf16=False, mode="default", optimizer="foreach", probe=True
    )
    rec = step.run_setting(setting, cfg, torch.device("cpu"))
    assert rec["status"] == "ok" and rec["setting"] == "compiled + channels_last + fp32 + online probe"
    assert rec["graphs_timed"] == 0
    probe_step = step.build(setting, cfg, torch.device("cpu"))
    assert len(probe_step.optimizers) == 2  # the probe's own optimiser is stepped too
