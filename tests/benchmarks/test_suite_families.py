"""The optional families stage of benchmarks.suite: off unless named, and its code path on a CPU
(--smoke): three families pretrained on the sample's 80/10/10 train part, each probed on the split."""

import json

from benchmarks import suite, suite_stages


def test_families_stage_is_optional():
    cfg = suite.parse(suite.SuiteConfig, ["--smoke"])
    assert "families" not in cfg.stage_list and "families" in suite_stages.all_stages()
    cfg = suite.parse(suite.SuiteConfig, ["--smoke", "--stages", "families"])
    assert cfg.stage_list == ["environment", "families"]


def test_families_smoke(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTSSL_DATA", raising=False)
    out = tmp_path / "res"
    suite.main(
        [
            "--smoke",
            "--stages",
            "families",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--work-dir",
            str(tmp_path / "work"),
            "--keep-work",
        ]
    )
    saved = json.loads((out / "suite.json").read_text())
    rec = {r["stage"]: r for r in saved["stages"]}["families"]
    assert rec["status"] == "ok", rec["reason"]
    fam = rec["result"]["families"]
    assert list(fam) == ["autoencoder", "simclr", "dim"]
    for method, r in fam.items():
        assert r["probe"]["status"] == "ok" and 0 <= r["probe"]["test_top1"] <= r["probe"]["test_top5"] <= 100
        assert "--split 80/10/10" in r["command"] and f"--method {method}" in r["command"]
        cfg = json.loads((tmp_path / "work" / f"family_{method}" / "config.json").read_text())
        assert cfg["config"]["method"] == method and cfg["split"]["test_images"] == 300  # the sample's 10%
        assert r["probe"]["test_images"] == 300
    md = (out / "suite.md").read_text()
    assert "## Families (CIFAR-10 80/10/10, one seed)" in md and "| dim |" in md


def test_families_get_one_epoch_count(tmp_path, monkeypatch):
    """Same budget per family: a family that finishes early does not hand its time to the next."""
    import fastssl.train

    monkeypatch.delenv("FASTSSL_DATA", raising=False)
    shares = []

    def plan(ctx, seconds_left, costs, probes):
        shares.append(seconds_left)
        return len(shares) * 7, {"source": "stub"}  # a second call would plan different epochs

    def instant_train(cfg, argv):
        return {"final_loss": 1.0, "val_knn_top1": 0.0, "knn_top1": 0.0, "knn_top5": 0.0, "wall_time_s": 0.0}

    monkeypatch.setattr(suite_stages, "plan_epochs", plan)
    monkeypatch.setattr(suite_stages, "measure_costs", lambda ctx, need_epoch: {})
    monkeypatch.setattr(fastssl.train, "train", instant_train)
    monkeypatch.setattr(suite_stages, "probe", lambda *a, **k: {"status": "ok"})
    out = tmp_path / "res"
    suite.main(["--smoke", "--stages", "families", "--out", str(out), "--work-dir", str(tmp_path / "work")])
    rec = {r["stage"]: r for r in json.loads((out / "suite.json").read_text())["stages"]}["families"]
    assert rec["status"] == "ok", rec["reason"]
    assert len(shares) == 1 and {r["epochs"] for r in rec["result"]["families"].values()} == {7}
