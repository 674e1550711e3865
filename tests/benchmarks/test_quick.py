"""Each benchmark's --quick run (CPU, seconds) writes complete, sane, self-describing outputs.
Speed is never asserted: only the schema, positivity of the measured rates, and that every pipeline
and target is accounted for. The measuring tools themselves are checked against known answers."""

import csv
import json

import pytest
import torch

from benchmarks import common, nt_xent, peaks, step, throughput

ENV_KEYS = {
    "command",
    "date",
    "git_commit",
    "gpu",
    "gpu_driver",
    "cpu",
    "cpu_cores",
    "torch",
    "torchvision",
    "dali",
    "ffcv",
    "python",
    "load_average_1_5_15min",
}


def outputs(out, stem):
    files = {e: out / f"{stem}.{e}" for e in ("json", "csv", "md", "png")}
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 0, path
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(files["json"].read_text())
    assert ENV_KEYS <= set(result["environment"]), ENV_KEYS - set(result["environment"])
    assert result["environment"]["command"].startswith(f"python -m benchmarks.{stem} --quick")
    with open(files["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result["records"])
    assert all(r["env_command"] == result["environment"]["command"] for r in rows)
    assert not list(out.glob("*.tmp-*")), "atomic writes leave no temporary files"
    return result, files["md"].read_text()


def last_printed(capsys, table_md):
    """The markdown table is the last thing printed on stdout (and the .md file holds it too)."""
    printed = capsys.readouterr().out.rstrip("\n")
    last = printed.splitlines()[-1]
    assert last.startswith("|") and last in table_md
    return printed


def check_summary(s):
    assert s["n"] >= 1 and len(s["values"]) == s["n"]
    assert 0 < s["min"] <= s["median"] <= s["max"]


def test_summary():
    s = common.summarize([3.0, 1.0, 2.0, 10.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 10.0, 4)


def test_saved_bytes_counts_what_autograd_keeps():
    # exp saves its (N, N) output; matmul saves its inputs (excluded: they exist anyway); sum saves
    # nothing. So exactly one (N, N) float32 matrix.
    n = 48
    z1, z2 = torch.randn(n, 8, requires_grad=True), torch.randn(n, 8, requires_grad=True)
    saved = nt_xent.saved_bytes(lambda a, b, t: (a @ b.T / t).exp().sum(), z1, z2, 2.0)
    assert saved == n * n * 4
    assert z1.grad is None  # the measurement leaves no gradients behind


def test_peak_table():
    assert common.peak_tflops(torch.device("cpu"))[0] is None
    assert common.peak_tflops(torch.device("cpu"), 123.0) == (123.0, "--peak-tflops")


@pytest.mark.parametrize(
    "name, model, target",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", True),
        ("NVIDIA H100 PCIe", "H100 PCIe", True),
        ("NVIDIA H100 NVL", "H100 NVL", True),
        ("NVIDIA H200", "H200 SXM", True),
        ("NVIDIA H200 NVL", "H200 NVL", True),
        ("NVIDIA GH200 480GB", "GH200 (H100/H200 GPU)", True),
        ("NVIDIA A100-SXM4-80GB", "A100", False),
        ("NVIDIA A100 80GB PCIe", "A100", False),
        ("NVIDIA L4", "L4", False),
        ("NVIDIA L40S", "L40S", False),
    ],
)
def test_device_names_match_whole_words(name, model, target):
    # "L4" is inside "L40S" and "H100" would be inside a hypothetical "GH100": substrings decide wrongly.
    assert peaks.lookup(name)[0] == model
    assert peaks.target_class(name) is target and (peaks.not_target_reason(name) == "") is target
    assert peaks.lookup("NVIDIA L40") is None and not peaks.target_class(None)


def test_measured_matmul_rate_and_mfu():
    m = peaks.measure_matmul("cpu", n=64, iters=2, dtype=torch.float32)
    assert m["tflops"] > 0 and len(m["window_s"]) == 3
    # 2 n^3 FLOPs per product over the fastest window, by definition
    assert m["tflops"] == pytest.approx(2 * 64**3 * 2 / min(m["window_s"]) / 1e12)
    info = {"datasheet_tflops": 100.0, "measured_tflops": 50.0}
    assert peaks.mfu(25.0, info) == {"mfu": 0.25, "mfu_measured": 0.5}
    assert peaks.mfu(None, info) == {"mfu": None, "mfu_measured": None}
    cpu = peaks.peak_info("cpu")
    assert (
        cpu["measured_tflops"] is None and cpu["datasheet_tflops"] is None
    )  # CPUs: nothing measured by default


def test_nt_xent_quick(tmp_path, capsys):
    nt_xent.main(["--quick", "--out", str(tmp_path)])
    result, md = outputs(tmp_path, "nt_xent")
    last_printed(capsys, md)
    recs = result["records"]
    for fname in ("nt_xent", "nt_xent_chunked"):
        for mode in ("eager", "compiled"):
            mine = [r for r in recs if r["function"] == fname and r["mode"] == mode]
            assert mine, (fname, mode)  # every case accounted for: measured or with a reason
            for r in mine:
                assert r["status"] == "ok" or r["status"].startswith(
                    ("unavailable: ", "failed: ", "skipped: ")
                ), r["status"]
    ok = [r for r in recs if r["status"] == "ok"]
    assert {(r["dtype"], r["n"]) for r in ok if r["function"] == "nt_xent"} == {
        (d, n) for d in ("fp32", "bf16") for n in (64, 128)
    }
    for r in ok:
        check_summary(r["fwd_bwd_ms"])
        assert r["saved_bytes"] > 0 and r["peak_cuda_bytes"] is None  # CPU: no CUDA peak
    assert len(result["targets"]) == 2
    for t in result["targets"]:
        assert t["status"] in ("met", "not met", "not measured") and (
            t["status"] != "not measured" or t["reason"]
        )


def test_step_quick(tmp_path, capsys):
    step.main(["--quick", "--out", str(tmp_path)])
    result, md = outputs(tmp_path, "step")
    last_printed(capsys, md)
    recs = result["records"]
    assert len({(r["compile"], r["channels_last"], r["bf16"]) for r in recs}) == 8
    assert recs[0]["setting"] == "eager + contiguous + fp32" and recs[0]["speedup_vs_baseline"] == 1.0
    for r in recs:
        check_summary(r["img_per_s"])
        assert r["tflops"] > 0 and r["mfu"] is None  # no peak for CPUs
    assert result["settings"]["flops_per_step"] > 0
    assert [e["choice"] for e in result["effects"]] == ["compile", "channels_last", "bf16"]


def test_throughput_quick(tmp_path, capsys):
    throughput.main(["--quick", "--out", str(tmp_path / "res"), "--cache-dir", str(tmp_path / "cache")])
    result, md = outputs(tmp_path / "res", "throughput")
    printed = last_printed(capsys, md)
    recs = {r["pipeline"]: r for r in result["records"]}
    assert set(recs) == {"torchvision", "gpu", "dali", "ffcv", "compute-only"}
    assert "cifar10-sample" in result["dataset"]
    for name, r in recs.items():
        assert r["status"] == "ok" or r["status"].startswith(("unavailable: ", "failed: ", "skipped: ")), r[
            "status"
        ]
        assert r["status"].split(":")[0] in printed
        if r["status"] != "ok":
            continue
        check_summary(r["e2e_img_per_s"])
        assert r["tflops"] > 0 and r["mfu"] is None
        assert 0.0 <= r["data_wait_fraction"] <= 1.0
        if name != "compute-only":
            check_summary(r["loader_img_per_s"])
    assert recs["gpu"]["status"] == "ok"  # pure torch: runs wherever fastssl does
    if recs["torchvision"]["status"] == "ok":
        assert recs["torchvision"]["e2e_vs_torchvision"] == pytest.approx(1.0)
    assert len(result["targets"]) == 4
    assert all(t["status"] == "not measured" and t["reason"] for t in result["targets"])  # CPU, sample data


def test_refuses_to_overwrite_and_bad_flags(tmp_path, capsys):
    (tmp_path / "nt_xent.json").write_text("keep")
    with pytest.raises(SystemExit) as e:
        nt_xent.main(["--quick", "--out", str(tmp_path)])
    assert e.value.code == 2 and (tmp_path / "nt_xent.json").read_text() == "keep"
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        throughput.main(["--quick", "--pipelines", "gpu,nope", "--out", str(tmp_path)])
    assert e.value.code == 2 and "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        step.main(["--repeats", "2", "--out", str(tmp_path)])
    assert e.value.code == 2 and ">= 5" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        step.main(["--quick", "--precisions", "fp16", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--precisions" in capsys.readouterr().err
