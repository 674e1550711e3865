"""`python -m benchmarks.suite`: --smoke runs every stage's code path on the CPU, the budget logic
cuts stages without dropping them, and scripts/device_stage.sh stages data in bounded parts that
join back exactly. Speed is never asserted."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import suite, suite_stages

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "device_stage.sh"


def test_smoke_runs_every_stage(tmp_path, capsys, monkeypatch, cifar100_root):
    monkeypatch.delenv("FASTSSL_DATA", raising=False)
    out = tmp_path / "res"
    suite.main(["--smoke", "--data-dir", cifar100_root, "--out", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert (
        printed[0].startswith("benchmarks.suite on") and "budget 180 s" in printed[0]
    )  # the plan comes first
    assert [line.split()[1] for line in printed[1:6]] == list(suite_stages.STAGES)
    assert printed[-1].startswith("files: ")  # the summary ends the output

    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(suite.FILES) and len(files) <= 8  # one folder, at most 8 files
    assert all(0 < (out / f).stat().st_size <= suite.MAX_FILE_BYTES for f in files)
    assert all((out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files if f.endswith(".png"))
    saved = json.loads((out / "suite.json").read_text())
    assert saved["environment"]["command"].startswith("python -m benchmarks.suite --smoke")
    st = {r["stage"]: r for r in saved["stages"]}
    assert list(st) == list(suite_stages.STAGES)
    assert all(r["status"] == "ok" for r in st.values()), {
        k: (r["status"], r["reason"]) for k, r in st.items()
    }
    assert saved["elapsed_s"] <= saved["budget_s"]

    env = st["environment"]["result"]["peak"]
    assert (
        env["measured_tflops"] > 0 and env["datasheet_tflops"] is None
    )  # measured even on a CPU; no datasheet

    rows = st["step"]["result"]["rows"]
    assert [r["setting"] for r in rows] == [name for name, _ in suite_stages.ABLATION]
    for r in rows:
        assert r["status"] == "ok" or r["status"].startswith(("unavailable: ", "skipped: ")), r
        if r["status"] == "ok":
            assert 0 < r["img_per_s"]["min"] <= r["img_per_s"]["median"] <= r["img_per_s"]["max"]
            assert r["recompiles_timed"] == 0 and r["optimizer_ms"] > 0
    assert rows[0]["status"] == "ok" and rows[0]["speedup_vs_first"] == 1.0
    assert (
        next(r for r in rows if r["setting"] == "+ CUDA graphs")["status"] != "ok"
    )  # no CUDA graphs on a CPU

    tp = {r["pipeline"]: r for r in st["throughput"]["result"]["records"]}
    assert {"gpu", "torchvision", "dali", "ffcv", "compute-only"} == set(tp) and tp["gpu"]["status"] == "ok"
    assert st["nt_xent"]["result"]["records"]

    tta = st["time_to_accuracy"]["result"]
    curve = tta["curve"]
    assert [p["epoch"] for p in curve] == list(
        range(1, tta["epochs_planned"] + 1)
    )  # kNN every epoch in smoke
    walls = [p["wall_s"] for p in curve]
    assert walls == sorted(walls) and 0 < walls[-1] <= tta["pretrain_wall_s"]
    assert all(0 <= p["knn_top1"] <= 100 for p in curve)
    assert (
        tta["probes"]["linear"]["status"] == "ok" and tta["probes"]["linear"]["dataset"] == "CIFAR-10 sample"
    )
    assert tta["probes"]["transfer"]["dataset"] == "CIFAR-100 (JPEG-recompressed copy)"  # labelled so
    # planned from the time left after measuring the costs, which are all measured
    plan = tta["plan"]
    assert plan["seconds_left"] + plan["costs"]["calibration_s"] <= st["time_to_accuracy"]["deadline_s"]
    assert all(
        plan["costs"][k] > 0
        for k in ("first_step_s", "forward_img_per_s", "checkpoint_s", "probe_head_epoch_s")
    )
    assert plan["probes_planned"] == ["linear", "transfer"]
    assert len(saved["targets"]) == 8
    assert all(t["status"] == "not measured" and t["reason"] for t in saved["targets"])  # CPU: nothing judged
    md = (out / "suite.md").read_text()
    assert "## Time to accuracy" in md and "JPEG-recompressed" in md and "not measured" in md


def fake_context(tmp_path, **results):
    cfg = suite.parse(suite.SuiteConfig, ["--smoke", "--out", str(tmp_path)])
    ctx = suite.Context(cfg, suite.common.resolve_device("cpu"), {}, str(tmp_path))
    ctx.sizes = dict(suite.FULL)  # the real run's sizes, with earlier stages' results as given
    ctx.max_epochs = suite.FULL["max_epochs"]
    ctx.results = results
    return ctx


# Measured costs as benchmarks.suite_plan.measure_costs returns them (the numbers are made up).
COSTS = {
    "first_step_s": 40.0,
    "forward_img_per_s": 100_000.0,
    "checkpoint_s": 0.4,
    "probe_head_epoch_s": 0.05,
    "calibration_s": 3.0,
}


def test_epochs_fit_the_stage_budget(tmp_path):
    rate = 10_000.0  # img/s measured by the throughput stage at the training batch size
    tp = {"result": {"gpu_e2e_img_per_s": rate, "settings": {"batch_size": 512}}}
    ctx = fake_context(tmp_path, throughput=tp)
    s, c = ctx.sizes, COSTS
    fwd = c["forward_img_per_s"]
    for seconds in (200.0, 400.0, 5000.0):
        for probes in (["linear", "transfer"], ["linear"], []):
            epochs, plan = suite_stages.plan_epochs(ctx, seconds, c, probes)
            per_epoch = s["train_images"] / rate
            assert plan["epoch_s_estimate"] == pytest.approx(per_epoch)

            def total(
                e,
            ):  # compile, setup, steps + 2 checkpoints per epoch, a kNN every 10, final kNNs, probes
                knn = s["train_images"] / fwd
                final = knn + (s["train_images"] + s["test_images"]) / fwd
                probe = (s["probe_images"] + s["test_images"]) / fwd + 2 * s["probe_epochs"] * c[
                    "probe_head_epoch_s"
                ]
                return (
                    c["first_step_s"]
                    + s["train_setup_s"]
                    + e * (per_epoch + 2 * c["checkpoint_s"])
                    + (e / 10) * knn
                    + final
                    + len(probes) * probe
                )  # e / 10 >= the e // 10 kNN passes

            assert total(epochs) <= 0.95 * seconds or epochs == 1
            assert epochs == 200 or total(epochs + 1) > 0.95 * seconds  # the most that fit, up to 200
    # the same rate read from an earlier run's suite.json (--rates-from) gives the same plan
    (tmp_path / "a.json").write_text(json.dumps({"stages": [{"stage": "throughput", **tp}]}))
    cfg = suite.parse(suite.SuiteConfig, ["--smoke", "--rates-from", str(tmp_path / "a.json")])
    later = suite.Context(cfg, ctx.device, {}, str(tmp_path))
    later.sizes, later.max_epochs = dict(suite.FULL), 200
    assert suite_stages.plan_epochs(later, 400.0, c) == suite_stages.plan_epochs(ctx, 400.0, c)[:1] + (
        {
            **suite_stages.plan_epochs(ctx, 400.0, c)[1],
            "source": "throughput stage of --rates-from: gpu pipeline end-to-end",
        },
    )
    ctx.max_epochs = 30
    assert suite_stages.plan_epochs(ctx, 5000.0, c)[0] == 30  # --max-epochs caps the plan
    ctx.cfg.epochs = 7
    assert suite_stages.plan_epochs(ctx, 10.0, c)[0] == 7  # --epochs wins


def test_budget_cuts_stages_but_never_drops_them(tmp_path, monkeypatch, capsys):
    calls = []

    def cooperative(ctx, expired):  # polls its deadline, keeps what it did
        n = 0
        while not expired():
            n += 1
            time.sleep(0.01)
        calls.append("cooperative")
        return {"done": n, "cut": True}

    def stubborn(ctx, expired):  # ignores its deadline: interrupted after the grace period
        ctx.partial["throughput"] = {"partial": True}
        time.sleep(30)
        return {}

    def broken(ctx, expired):
        raise RuntimeError("boom")

    Stage = suite_stages.Stage
    stages = {
        "environment": Stage(cooperative, "c", 1, 1),
        "step": Stage(stubborn, "s", 1, 1),
        "throughput": Stage(stubborn, "s", 1, 1),
        "nt_xent": Stage(broken, "b", 1, 1),
        "time_to_accuracy": Stage(cooperative, "c", 1, 1),
    }
    monkeypatch.setattr(suite_stages, "STAGES", stages)
    t0 = time.monotonic()
    report = suite.main(["--smoke", "--budget", "2", "--grace", "0.2", "--out", str(tmp_path)])
    assert time.monotonic() - t0 < 10
    st = {r["stage"]: r for r in report["stages"]}
    assert list(st) == list(stages)  # every stage reported, in order
    assert st["environment"]["status"] == "cut" and st["environment"]["result"]["done"] > 0
    assert st["step"]["status"] == "cut" and "after its deadline" in st["step"]["reason"]
    assert st["throughput"]["result"] == {"partial": True}  # partial results of an interrupted stage survive
    assert st["nt_xent"]["status"] == "failed" and "boom" in st["nt_xent"]["reason"]
    assert st["time_to_accuracy"]["status"] in ("cut", "ok")
    for r in report["stages"]:
        assert r["seconds"] <= r["deadline_s"] + 0.2 + 0.5
    saved = json.loads((tmp_path / "suite.json").read_text())
    assert [r["status"] for r in saved["stages"]] == [r["status"] for r in report["stages"]]
    assert "| step | cut |" in (tmp_path / "suite.md").read_text()


def test_bad_flags_and_existing_outputs(tmp_path, capsys):
    (tmp_path / "suite.json").write_text("keep")
    with pytest.raises(SystemExit) as e:
        suite.main(["--smoke", "--out", str(tmp_path)])
    assert e.value.code == 2 and (tmp_path / "suite.json").read_text() == "keep"
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text("{not json")
    for bad in (
        ["--stages", "step,nope"],
        ["--budget", "0"],
        ["--epochs", "-1"],
        ["--max-epochs", "0"],
        ["--estimates", "nope=3"],
        ["--estimates", "step=x"],
        ["--rates-from", str(tmp_path / "junk.json")],
    ):
        with pytest.raises(SystemExit) as e:
            suite.main(["--smoke", "--out", str(tmp_path / "new"), *bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1, err
    assert not (tmp_path / "new").exists()


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_device_stage_parts_join_back_exactly(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = __import__("random").Random(0)
    sizes = {"cifar10.npz": 2500, "cifar100.npz": 1300, "README.md": 40}
    for name, n in sizes.items():
        (src / name).write_bytes(bytes(rng.getrandbits(8) for _ in range(n)))
    # a stand-in for unpack.py: records what it was asked to unpack
    (src / "unpack.py").write_text("import os, sys\nos.makedirs(os.path.join(sys.argv[1], sys.argv[3]))\n")
    stage = tmp_path / "stage"
    done = subprocess.run(
        [
            "bash",
            str(SCRIPT),
            "--out",
            str(stage),
            "--data-src",
            str(src),
            "--part-bytes",
            "1000",
            "data",
            "plan",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    transfers = sorted(stage.glob("transfer-*"))
    assert len(transfers) >= 4  # 3 + 2 + 1 + 1 parts of <= 1000 bytes, packed first-fit
    for t in transfers:
        data = [p for p in t.rglob("*") if p.is_file() and p.name != "SHA256SUMS"]
        assert data and sum(p.stat().st_size for p in data) <= 1000
        assert (t / "data" / "SHA256SUMS").is_file()  # each transfer can be checked on arrival
        assert f"{t.name}:" in done.stdout
    assert "python3 -m benchmarks.suite" in done.stdout and "assemble" in done.stdout

    # The GPU side: a repository copy that receives the transfers one at a time.
    gpu = tmp_path / "gpu"
    (gpu / "scripts").mkdir(parents=True)
    (gpu / "scripts" / "device_stage.sh").write_bytes(SCRIPT.read_bytes())
    (gpu / ".cache" / "stage").mkdir(parents=True)

    bin_dir = tmp_path / "bin"  # as on the GPU machine: python3, no python
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    assert shutil.which("python", path=env["PATH"]) is None

    def assemble():
        r = subprocess.run(
            ["bash", "scripts/device_stage.sh", "assemble"],
            cwd=gpu,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    first = transfers[0]
    shutil.copytree(first, gpu / ".cache" / "stage" / first.name)  # as a transfer arrives
    assert "waiting: cifar10.npz" in assemble()  # not all parts yet: nothing half-joined is used
    assert not (gpu / ".cache" / "stage" / "joined" / "cifar10.npz").exists()
    for t in transfers[1:]:
        shutil.copytree(t, gpu / ".cache" / "stage" / t.name)
    text = assemble()
    joined = gpu / ".cache" / "stage" / "joined"
    for name in list(sizes) + ["unpack.py"]:
        assert f"complete: {name}" in text
        assert sha(joined / name) == sha(src / name)  # exact round trip
    assert sorted(os.listdir(gpu / ".cache" / "data")) == ["cifar10", "cifar100"]


def test_device_stage_dry_run_prints_each_command(tmp_path):
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path / "s"), "ffcv", "dali", "plan"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    text = done.stdout
    assert "nvidia-dali-cuda120" in text and "--python-version 3.12" in text
    if "no Python 3.12 found" in text:  # said so, and that step alone fails
        assert done.returncode == 1 and "not done: ffcv" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert "pip wheel --no-deps ffcv==1.0.2" in text and "auditwheel repair" in text
    assert not (tmp_path / "s").exists()  # a dry run creates nothing
    none = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--python", str(tmp_path / "nope"), "ffcv"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert none.returncode == 1 and "no Python 3.12 found" in none.stdout


def test_a_new_stage_is_one_function_and_one_line(tmp_path, monkeypatch):
    def extra(ctx, expired):
        return {"markdown": "| entrant | img/s |\n|---|---|\n| fastssl | 1 |\n"}

    monkeypatch.setitem(
        suite_stages.OPTIONAL, "extra", suite_stages.Stage(extra, "an extra comparison", 100, 1)
    )
    report = suite.main(["--smoke", "--stages", "extra", "--out", str(tmp_path)])
    assert [r["stage"] for r in report["stages"]] == ["environment", "extra"]
    assert report["stages"][1]["status"] == "ok"
    assert "## extra\n\n| entrant | img/s |" in (tmp_path / "suite.md").read_text()


def test_race_stage_runs_the_race_and_reports_its_table(tmp_path, monkeypatch):
    """The GPU suite's race stage on the CPU: the race runs in a child, its table is the stage's
    section, and a peer that is not installed is listed as skipped, never silently dropped."""
    monkeypatch.delenv("FASTSSL_DATA", raising=False)
    from benchmarks.race import ENTRANTS

    monkeypatch.setattr(ENTRANTS["lightly"], "available", lambda: "lightly is not installed (test)")
    report = suite.main(["--smoke", "--stages", "race", "--out", str(tmp_path)])
    stage = report["stages"][1]
    assert stage["stage"] == "race" and stage["status"] == "ok", stage
    result = stage["result"]
    assert result["entrants"][1] == "plain" and result["skipped"] == {
        "lightly": "lightly is not installed (test)"
    }
    assert result["command"].startswith("python3 -m benchmarks.race --dataset cifar10-sample")
    assert set(result["summary"]["entrants"]) == set(result["entrants"])
    section = (tmp_path / "suite.md").read_text().split("## race\n", 1)[1]
    assert "SimCLR, cifar10-sample (64 training images)" in section and "| `plain` |" in section
