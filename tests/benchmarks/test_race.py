"""The race: every entrant trains and is scored, the one evaluation gives identical scores for
identical backbones, the ratios are computed from the measured rows, and entrants are a registry."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks.race import ENTRANTS
from benchmarks.race.__main__ import entrant_list, main
from benchmarks.race.eager import run_epochs, torchvision_resnet18
from benchmarks.race.report import summarize_runs
from benchmarks.race.score import score
from fastssl.checkpoint import export_backbone, load_network
from fastssl.config import ConfigError
from pipelines import DataError
from pipelines.data.arrays import ArrayDataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def hermetic(monkeypatch):
    for var in ("FASTSSL_DATA", "CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)


def test_smoke_race_runs_every_entrant_and_its_ratios_come_from_the_rows(tmp_path):
    pytest.importorskip("lightly")
    out = tmp_path / "race"
    assert main(["--smoke", "--seeds", "0", "--out", str(out), "--device", "cpu"]) == 0
    result = json.loads((out / "race.json").read_text())
    assert [r["entrant"] for r in result["runs"]] == ["fastssl", "lightly", "plain"]
    for run in result["runs"]:
        assert [e["epoch"] for e in run["epochs"]] == [0, 1]
        assert all(
            e["images"] == 64 and e["time_s"] > 0 and 0 <= e["data_wait_s"] <= e["time_s"]
            for e in run["epochs"]
        )
        assert run["peak_rss_tree_mib"] > 0
    for s in result["scores"]:  # a snapshot after epoch 1 and the final network, both scored
        assert [p["epoch"] for p in s["curve"]] == [1, 2] and 0 <= s["final"]["top1"] <= 100
    rows = {r["entrant"]: r for r in result["summary"]["rows"]}
    for name, run in zip(rows, result["runs"]):  # images/s: whole epochs after the first
        assert rows[name]["img_per_s"] == pytest.approx(
            run["epochs"][1]["images"] / run["epochs"][1]["time_s"]
        )
    for name in ("lightly", "plain"):
        stats = result["summary"]["entrants"][name]
        assert stats["speedup_of_reference"]["mean"] == pytest.approx(
            rows["fastssl"]["img_per_s"] / rows[name]["img_per_s"]
        )
        assert stats["knn_top1_minus_reference"]["mean"] == pytest.approx(
            rows[name]["knn_top1"] - rows["fastssl"]["knn_top1"]
        )
    table = (out / "race.md").read_text()
    assert all(f"`{e}`" in table for e in ENTRANTS) and "untrained network" in table
    assert "LARS: trust coefficient 0.001" in table  # the differences are printed, not silent
    assert (out / "race.png").stat().st_size > 0


def random_images(n, seed):
    rng = np.random.default_rng(seed)
    return ArrayDataset(
        rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        np.arange(n) % 10,
        [str(i) for i in range(10)],
        "random",
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
    )


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_one_evaluation_sees_each_entrants_network_exactly(tmp_path, stem):
    torch.manual_seed(0)
    net = torchvision_resnet18(stem)
    net.train()(torch.randn(8, 3, 32, 32))  # non-trivial BatchNorm statistics
    export_backbone(net, str(tmp_path / "a.pt"))
    export_backbone(net, str(tmp_path / "b.pt"))
    loaded, _ = load_network(str(tmp_path / "a.pt"))
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), net.eval()(x), rtol=1e-5, atol=1e-5)
    bank, test = random_images(60, 1), random_images(30, 2)
    a = score(str(tmp_path / "a.pt"), bank, test, bank.mean, bank.std, torch.device("cpu"), 20, 0.1)
    b = score(str(tmp_path / "b.pt"), bank, test, bank.mean, bank.std, torch.device("cpu"), 20, 0.1)
    assert a == b
    other = score(
        str(tmp_path / "a.pt"), bank, test, (0.4, 0.4, 0.4), (0.3, 0.3, 0.3), torch.device("cpu"), 20, 0.1
    )
    assert set(other) == {"top1", "top5"}  # an entrant's own normalisation is a parameter of its score


def test_a_score_is_kept_beside_its_backbone_and_redone_when_the_weights_change(tmp_path, monkeypatch):
    import benchmarks.race.score as race_score

    torch.manual_seed(0)
    path = str(tmp_path / "a.pt")
    export_backbone(torchvision_resnet18("imagenet"), path)
    bank, test = random_images(40, 1), random_images(20, 2)
    first = score(path, bank, test, bank.mean, bank.std, torch.device("cpu"), 10, 0.1)
    calls = []
    monkeypatch.setattr(
        race_score, "knn_eval", lambda *a, **k: calls.append(1) or {"top1": -1.0, "top5": -1.0}
    )
    assert score(path, bank, test, bank.mean, bank.std, torch.device("cpu"), 10, 0.1) == first and not calls
    assert (
        score(path, bank, test, bank.mean, bank.std, torch.device("cpu"), 5, 0.1)["top1"] == -1.0
    )  # another k
    export_backbone(torchvision_resnet18("imagenet"), path)  # new weights at the same path
    assert score(path, bank, test, bank.mean, bank.std, torch.device("cpu"), 10, 0.1)["top1"] == -1.0
    assert len(calls) == 2


def test_ratios_are_paired_by_seed_and_skip_the_first_epoch():
    def run(entrant, seed, first, steady):
        return {
            "entrant": entrant,
            "seed": seed,
            "peak_rss_tree_mib": 1.0,
            "peak_cuda_mib": None,
            "epochs": [
                {"time_s": first, "images": 100, "data_wait_s": 0.0, "loss": 5.0},
                {"time_s": steady, "images": 100, "data_wait_s": steady / 4, "loss": 4.0},
            ],
        }

    runs = [
        run("fastssl", 0, 9.0, 1.0),
        run("lightly", 0, 1.0, 2.0),
        run("fastssl", 1, 9.0, 1.0),
        run("lightly", 1, 1.0, 4.0),
    ]
    scores = [
        {"final": {"top1": t, "top5": 90.0}, "curve": [{"epoch": 2, "top1": t, "top5": 90.0}]}
        for t in (40.0, 42.0, 41.0, 41.0)
    ]
    summary = summarize_runs(runs, {"runs": scores, "untrained": []}, ["fastssl", "lightly"])
    lightly = summary["entrants"]["lightly"]
    assert lightly["speedup_of_reference"]["values"] == [2.0, 4.0]  # the slow first epoch of fastssl is apart
    assert lightly["knn_top1_minus_reference"]["values"] == [2.0, 0.0]
    assert summary["entrants"]["fastssl"]["first_epoch_img_per_s"]["mean"] == pytest.approx(100 / 9)
    assert lightly["data_wait_share"]["mean"] == pytest.approx(0.25)
    assert summary["measures"][1]["curve"] == [{"train_s": 3.0, "top1": 42.0, "top5": 90.0}]


def test_an_epoch_is_timed_whole_and_its_data_wait_counted(monkeypatch):
    """On a virtual clock: each batch takes 2 units to arrive, each step 1; the epoch is 9 units."""
    import benchmarks.race.eager as eager

    clock = [0.0]
    monkeypatch.setattr(eager.time, "perf_counter", lambda: clock[0])

    class SlowLoader:
        batch_size = 2

        def __iter__(self):
            for i in range(3):
                clock[0] += 2.0
                yield i

    def step(batch):
        clock[0] += 1.0
        return torch.tensor(float(batch))

    (rec,) = run_epochs(step, SlowLoader(), 1, torch.device("cpu"))
    assert rec["images"] == 6 and rec["loss"] == pytest.approx(1.0)
    assert rec["data_wait_s"] == pytest.approx(6.0) and rec["time_s"] == pytest.approx(9.0)


def test_entrants_are_a_registry_with_knobs():
    for name, module in ENTRANTS.items():
        assert (
            callable(module.train) and isinstance(module.DIFFERENCES, list) and isinstance(module.KNOBS, dict)
        )
    assert ENTRANTS["lightly"].available() is None or "pip install" in ENTRANTS["lightly"].available()
    assert entrant_list("fastssl,lightly:lars=fastssl,norm=dataset,plain,fastssl:proj_out_bn=true") == [
        "fastssl",
        "lightly:lars=fastssl,norm=dataset",
        "plain",
        "fastssl:proj_out_bn=true",
    ]
    with pytest.raises(ConfigError, match="unknown entrant 'solo'"):
        entrant_list("fastssl,solo")
    with pytest.raises(DataError, match="unknown knob lars=sgd"):
        ENTRANTS["lightly"].knobs_of({"lars": "sgd"})


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "race"
    out.mkdir()
    (out / "race.json").write_text("keep")
    for args in (["--entrants", "fastssl,nope"], ["--seeds", "a,b"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.race", "--smoke", "--out", str(out), *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if k != "FASTSSL_DATA"},
        )
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (out / "race.json").read_text() == "keep"
