"""The families study: its plans expand to method x split x seed cells whose probes inherit the
cell's split, a probe on another split is refused before anything runs, and the report shows the
measured table beside the quoted claims (labelled as not measured) with its three plots."""

import csv
import dataclasses
import json
import os
import statistics
from pathlib import Path

import pytest

from fastssl.config import ConfigError, parse
from fastssl.eval import families, report
from fastssl.eval.experiment import _argv, load_plan, state
from fastssl.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("plan", ["families.toml", "families_cpu.toml"])
def test_family_plans_expand(plan):
    _, cells = load_plan(str(REPO / "experiments" / plan))
    assert len(cells) == 3 * 2 * 3
    assert {c.values["method"] for c in cells} == {"autoencoder", "simclr", "dim"}
    for c in cells:
        assert "/" not in c.name and c.linear["split"] == c.pretrain["split"] == c.values["split"]
        assert c.linear["split_seed"] == c.pretrain["split_seed"] == 0
    budgets = {(c.pretrain["epochs"], c.pretrain["batch_size"], c.pretrain.get("stem")) for c in cells}
    assert len(budgets) == 1  # one budget and one backbone for every family


def test_probe_on_another_split_is_refused(tmp_path):
    text = (REPO / "experiments" / "families_cpu.toml").read_text()
    text = text.replace('out = "runs/families_cpu"', f'out = "{tmp_path / "exp"}"')
    path = tmp_path / "plan.toml"
    path.write_text(text.replace("[linear]\n", '[linear]\nsplit = "official"\n'))
    with pytest.raises(ConfigError, match="would test pretraining images"):
        load_plan(str(path))


def test_runs_saved_before_the_split_existed_still_match(tmp_path):
    """A cell directory whose config.json predates the split fields ran with their defaults."""
    text = (REPO / "experiments" / "families_cpu.toml").read_text()
    path = tmp_path / "plan.toml"
    path.write_text(text.replace('out = "runs/families_cpu"', f'out = "{tmp_path / "exp"}"'))
    _, cells = load_plan(str(path))
    cell = next(c for c in cells if c.values["split"] == "official")
    saved = dataclasses.asdict(parse(PretrainConfig, _argv(cell.pretrain)))
    del saved["split"], saved["split_seed"]
    os.makedirs(cell.pretrain["out"])
    with open(os.path.join(cell.pretrain["out"], "config.json"), "w") as f:
        json.dump({"config": saved}, f)
    assert state(cell) == "new"
    other = next(
        c
        for c in cells
        if c.values["split"] == "80/10/10"
        and c.values["seed"] == cell.values["seed"]
        and c.values["method"] == cell.values["method"]
    )
    os.makedirs(other.pretrain["out"])
    with open(os.path.join(other.pretrain["out"], "config.json"), "w") as f:
        json.dump({"config": saved}, f)  # an official-split run where the plan wants 80/10/10
    with pytest.raises(ConfigError, match="split"):
        state(other)


def _fake_experiment(root: Path):
    """An experiment directory as fastssl.experiment leaves it: results.csv, experiment.toml and,
    per cell, a pretraining run with its epoch summaries."""
    rows, expected = [], {}
    for m, base in (("autoencoder", 20.0), ("simclr", 30.0), ("dim", 25.0)):
        for seed in (0, 1, 2):
            top1, top5 = base + seed, base + 40 + 2 * seed
            expected.setdefault(m, []).append((top1, top5))
            name = f"method-{m}_split-80-10-10_seed-{seed}"
            run = root / "cells" / name / "pretrain"
            run.mkdir(parents=True)
            (run / "config.json").write_text(
                json.dumps({"config": {"method": m, "split": "80/10/10", "seed": seed}})
            )
            (run / "summary.json").write_text(json.dumps({"final_loss": 1.0}))
            (run / "metrics.jsonl").write_text(
                "".join(
                    json.dumps({"epoch": e, "summary": True, "epoch_loss": 2.0 - e, "val_knn_top1": base + e})
                    + "\n"
                    for e in range(2)
                )
            )
            rows.append(
                {
                    "cell": name,
                    "method": m,
                    "split": "80/10/10",
                    "seed": seed,
                    "linear_top1": top1,
                    "linear_top5": top5,
                    "knn_top1": base - 1,
                    "knn_top5": base + 30,
                    "eval_dataset": "CIFAR-10 sample, test part of 80/10/10",
                }
            )
    with open(root / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (root / "experiment.toml").write_text('out = "x"\n')
    return expected


def test_report_families_section(tmp_path):
    expected = _fake_experiment(tmp_path / "exp")
    out = tmp_path / "report"
    assert report.main([str(tmp_path / "exp"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "quoted claims, not measured by fastssl" in md and "Three families on one backbone" in md
    lines = {
        ln.split("|")[1].strip(): ln
        for ln in md.splitlines()
        if ln.startswith("| ") and "(" in ln.split("|")[1]
    }
    for m, claim in families.QUOTED_CLAIMS.items():
        row = [c.strip() for c in lines[families.FAMILIES[m]].split("|")[1:-1]]
        top1, top5 = zip(*expected[m])
        assert row[1] == f"{statistics.mean(top1):.2f} ± {statistics.stdev(top1):.2f}"
        assert row[2] == f"{statistics.mean(top5):.2f} ± {statistics.stdev(top5):.2f}"
        assert row[5] == "3" and row[6] == f"{claim[0]:.2f}" and row[7] == f"{claim[1]:.2f}"
    for png in ("families_loss.png", "families_knn.png", "families_accuracy.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png in md
    assert families.QUOTED_CLAIMS == {
        "autoencoder": (63.4, 85.6),
        "simclr": (68.2, 91.3),
        "dim": (72.1, 94.5),
    }
    assert not [p for p in os.listdir(out) if ".tmp-" in p]


def test_data_fraction_is_of_the_split_train_part(tmp_path):
    text = (REPO / "experiments" / "families_cpu.toml").read_text()
    text = text.replace('out = "runs/families_cpu"', f'out = "{tmp_path / "exp"}"').replace(
        "subset = 64\n", ""
    )
    text = text.replace(
        'split = ["80/10/10", "official"]', 'split = ["80/10/10", "official"]\ndata_fraction = [0.5]'
    )
    path = tmp_path / "plan.toml"
    path.write_text(text)
    _, cells = load_plan(str(path))
    subsets = {c.values["split"]: c.pretrain["subset"] for c in cells}
    assert subsets == {
        "80/10/10": 1200,
        "official": 1000,
    }  # half of 2,400 (train part) and of 2,000 (train split)
