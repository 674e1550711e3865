"""The report renders from small real runs: the comparison, sweep and data-size tables, the PNGs,
a self-contained HTML file; existing outputs are never replaced without --overwrite."""

import json
import os

import pytest
from test_experiment import image_folder  # the experiment tests' folder maker (same directory)

from fastssl import supervised
from fastssl.eval import experiment, linear, report

CPU = ["--device", "cpu", "--no-progress"]
PLAN = """
description = "tiny data-size series"
out = "{out}"
seeds = [0]
[pretrain]
dataset = "imagefolder"
data_dir = "{data}"
subset = 32
stem = "imagenet"
batch_size = 16
epochs = 1
warmup_epochs = 0
proj_hidden_dim = 64
proj_dim = 32
knn_every = 0
log_interval = 1
compile = false
[grid]
data_fraction = [0.5, 1.0]
[linear]
dataset = "imagefolder"
data_dir = "{data}"
epochs = 2
batch_size = 16
lrs = "0.1"
wds = "0"
knn_k = 10
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = str(image_folder(tmp_path_factory.mktemp("data")))
    folder = ["--dataset", "imagefolder", "--data-dir", data]
    plan = root / "plan.toml"
    plan.write_text(PLAN.format(out=root / "exp", data=data))
    assert experiment.main([str(plan), *CPU]) == 0
    assert (
        supervised.main(
            [
                *folder,
                "--batch-size",
                "16",
                "--epochs",
                "2",
                "--stem",
                "imagenet",
                "--knn-every",
                "1",
                "--knn-k",
                "10",
                "--warmup-epochs",
                "0",
                "--no-compile",
                "--out",
                str(root / "scratch"),
                *CPU,
            ]
        )
        == 0
    )
    for seed in (0, 1):  # two repeats of one setting: the main table reports mean ± std, n = 2
        assert (
            linear.main(
                [
                    "--backbone",
                    "random",
                    "--stem",
                    "imagenet",
                    *folder,
                    "--epochs",
                    "2",
                    "--lrs",
                    "0.1",
                    "--wds",
                    "0",
                    "--knn-k",
                    "10",
                    "--seed",
                    str(seed),
                    "--out",
                    str(root / f"random_s{seed}"),
                    *CPU,
                ]
            )
            == 0
        )
    return root


def test_report_tables_and_plots(runs, tmp_path):
    out = tmp_path / "report"
    assert report.main([str(runs), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert (
        "## Main comparison" in md
        and "| backbone | protocol | evaluated on | top-1 | top-5 | kNN top-1 | n |" in md
    )
    assert "supervised from scratch (image folder, 2 ep)" in md and "end-to-end, from scratch" in md
    random_row = next(line for line in md.splitlines() if line.startswith("| random init"))
    assert "±" in random_row and random_row.rstrip().endswith("| 2 |")
    assert "SimCLR (image folder, 16 images, 1 ep" in md and "SimCLR (image folder, 32 images, 1 ep" in md
    assert (
        "## Pretraining data size: data_fraction" in md and "| data_fraction | n | pretraining images |" in md
    )
    for png in [
        "pretrain_loss.png",
        "knn_curves.png",
        "linear_curves.png",
        "supervised_curves.png",
        "data_size.png",
    ]:
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in md, png
    html = (out / "report.html").read_text()
    assert (
        html.count("data:image/png;base64,") == 5 and "src='data_size.png'" not in html and "<table>" in html
    )
    assert sorted(os.listdir(out)) == sorted(
        [
            "report.md",
            "report.html",
            "pretrain_loss.png",
            "knn_curves.png",
            "linear_curves.png",
            "supervised_curves.png",
            "data_size.png",
        ]
    )


def test_means_and_stds_are_right(runs):
    found = report.discover([str(runs)])
    tops = [json.loads((runs / f"random_s{s}" / "summary.json").read_text())["test_top1"] for s in (0, 1)]
    row = next(r for r in report.main_rows(found) if r["kind"] == "random")
    mean, std = sum(tops) / 2, abs(tops[0] - tops[1]) / 2**0.5  # sample std of two values
    assert row["top1"] == f"{mean:.2f} ± {std:.2f}" and row["n"] == 2


def test_cifar100_copy_note(runs, tmp_path):
    summary = runs / "random_s0" / "summary.json"
    s = json.loads(summary.read_text())
    s["data"]["label"] = "CIFAR-100 (JPEG-recompressed copy)"
    copy = tmp_path / "runs" / "c100"
    copy.mkdir(parents=True)
    (copy / "summary.json").write_text(json.dumps(s))
    blocks = report.build(report.discover([str(copy)]), report.ReportConfig(runs=str(copy)), str(tmp_path))
    text = report.to_markdown(blocks)
    assert "| CIFAR-100 (JPEG-recompressed copy) |" in text and "not, official CIFAR-100 numbers" in text


def test_refuses_existing_out_and_missing_runs(runs, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    with pytest.raises(SystemExit) as e:
        report.main([str(runs), "--out", str(out)])
    assert (
        e.value.code == 2
        and "--overwrite" in capsys.readouterr().err
        and (out / "notes.md").read_text() == "mine"
    )
    with pytest.raises(SystemExit) as e:
        report.main([str(tmp_path / "nothing_here"), "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "nothing_here" in err
    assert report.main([str(runs), "--out", str(out), "--overwrite", "--no-html"]) == 0
    assert (
        not (out / "notes.md").exists()
        and (out / "report.md").is_file()
        and not (out / "report.html").exists()
    )
