"""The experiment runner: the plan expands to the declared cells, finished cells are skipped, an
interrupted cell resumes from its checkpoint, and an edited plan never reuses stale results."""

import csv
import json
import os

import numpy as np
import pytest

import pipelines
from fastssl import checkpoint as ckpt
from fastssl import train
from fastssl.eval import linear
from fastssl.eval.experiment import load_plan, main
from pipelines import datasets

# A 4-class image folder cut from the CIFAR-10 sample keeps every step (train, kNN, probe) tiny.
PLAN = """
out = "{out}"
seeds = [0]

[pretrain]
dataset = "imagefolder"
data_dir = "{data}"
subset = 16
stem = "imagenet"
batch_size = 16
epochs = 2
warmup_epochs = 0
proj_hidden_dim = 64
proj_dim = 32
knn_every = 0
log_interval = 1
compile = false

[grid]
temperature = [0.2, 0.5]

[linear]
dataset = "imagefolder"
data_dir = "{data}"
epochs = 3
batch_size = 16
lrs = "0.1"
wds = "0"
knn_k = 10
"""
FLAGS = ["--device", "cpu", "--no-progress"]


def image_folder(root, train_per_class=8, test_per_class=4, classes=4):
    """root/{train,test}/<class>/<i>.png from the first images of the CIFAR-10 sample's classes."""
    from PIL import Image

    for split, n in (("train", train_per_class), ("test", test_per_class)):
        data = datasets.load("cifar10-sample", split)
        for c in range(classes):
            (root / split / data.classes[c]).mkdir(parents=True)
            for i, j in enumerate(np.flatnonzero(data.labels == c)[:n]):
                Image.fromarray(data.images[j]).save(root / split / data.classes[c] / f"{i}.png")
    return root


def write_plan(tmp_path, text=PLAN, name="plan.toml"):
    if not (tmp_path / "folder").exists():
        image_folder(tmp_path / "folder")
    path = tmp_path / name
    path.write_text(text.format(out=tmp_path / "exp", data=tmp_path / "folder"))
    return str(path)


def test_plan_expands_grids_seeds_and_data_fractions(tmp_path):
    text = PLAN.replace("seeds = [0]", "seeds = [0, 1]").replace(
        "[grid]\ntemperature = [0.2, 0.5]",
        "[[grid]]\ntemperature = [0.2, 0.5]\nbatch_size = [16, 32]\n[[grid]]\ndata_fraction = [0.5, 1.0]\n"
        "[[grid]]\ntemperature = [0.2]\nbatch_size = [32]",
    )  # the last grid repeats cells of the first
    plan, cells = load_plan(write_plan(tmp_path, text))
    names = [c.name for c in cells]
    assert len(names) == 2 * 2 * 2 + 2 * 2 and len(set(names)) == len(names)
    assert "temperature-0.5_batch_size-16_seed-1" in names and "data_fraction-0.5_seed-0" in names
    half = next(c for c in cells if c.name == "data_fraction-0.5_seed-0")
    assert (
        half.pretrain["subset"] == 8 and half.pretrain["seed"] == 0
    )  # half of [pretrain] subset = 16 images
    full = next(c for c in cells if c.name == "data_fraction-1_seed-1")
    assert full.pretrain["subset"] == 16 and full.pretrain["seed"] == 1
    assert half.linear["backbone"] == half.pretrain["out"] and half.linear["seed"] == 0
    assert half.pretrain["out"] == os.path.join(plan["out"], "cells", half.name, "pretrain")


@pytest.mark.parametrize(
    "edit, words",
    [
        (("seeds = [0]", "seeds = [0]\nbogus = 1"), "bogus"),
        (("seeds = [0]", "seeds = []"), "seeds"),
        (("temperature = [0.2, 0.5]", "tempreature = [0.2]"), "tempreature"),
        (("temperature = [0.2, 0.5]", "temperature = [-1.0]"), "temperature"),
        (("temperature = [0.2, 0.5]", "seed = [1, 2]"), "seed"),
        (('lrs = "0.1"', 'lrs = "fast"'), "lrs"),
    ],
)
def test_bad_plans_exit_2(tmp_path, capsys, edit, words):
    with pytest.raises(SystemExit) as e:
        main([write_plan(tmp_path, PLAN.replace(*edit)), *FLAGS])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and words in err
    assert not (tmp_path / "exp").exists()


def test_skips_finished_cells_and_resumes_interrupted_one(tmp_path, monkeypatch):
    plan = write_plan(tmp_path)
    cells_dir = tmp_path / "exp" / "cells"
    real_build = pipelines.build

    def build_interrupting_second_cell(name, data, **kw):
        loader = real_build(name, data, **kw)
        if kw.get("recipe") == "simclr" and "0.5" in os.environ.get("CELL_UNDER_TEST", ""):
            set_epoch = loader.set_epoch

            def stop_at_1(e):  # Ctrl-C right after epoch 0's checkpoint
                if e == 1:
                    raise KeyboardInterrupt
                set_epoch(e)

            loader.set_epoch = stop_at_1
        return loader

    real_train = train.train

    def tracking_train(cfg, argv=(), command="fastssl.pretrain"):
        monkeypatch.setenv("CELL_UNDER_TEST", cfg.out)
        calls.append(list(argv))
        return real_train(cfg, argv, command)

    calls = []
    monkeypatch.setattr(pipelines, "build", build_interrupting_second_cell)
    monkeypatch.setattr(train, "train", tracking_train)
    with pytest.raises(SystemExit) as e:
        main([plan, *FLAGS])
    assert e.value.code == 130
    first, second = cells_dir / "temperature-0.2_seed-0", cells_dir / "temperature-0.5_seed-0"
    assert (first / "linear" / "summary.json").is_file()
    assert (second / "pretrain" / "last.pt").is_file() and not (second / "pretrain" / "summary.json").exists()
    assert ckpt.load(str(second / "pretrain" / "last.pt"))["epoch"] == 0
    rows = list(csv.DictReader(open(tmp_path / "exp" / "results.csv")))
    assert [r["cell"] for r in rows] == ["temperature-0.2_seed-0"] and float(rows[0]["linear_top1"]) >= 0

    # Second run: the finished cell is not touched, the interrupted one resumes from epoch 1.
    calls.clear()
    monkeypatch.setattr(pipelines, "build", real_build)
    assert main([plan, *FLAGS]) == 0
    assert len(calls) == 1 and "--resume" in calls[0] and str(second / "pretrain") in calls[0]
    epochs = [
        r["epoch"] for r in ckpt.read_jsonl(str(second / "pretrain" / "metrics.jsonl")) if r.get("summary")
    ]
    assert epochs == [0, 1]
    rows = list(csv.DictReader(open(tmp_path / "exp" / "results.csv")))
    assert [r["cell"] for r in rows] == ["temperature-0.2_seed-0", "temperature-0.5_seed-0"]
    assert all(r["linear_top1"] and r["knn_top1"] and r["temperature"] for r in rows)
    md = (tmp_path / "exp" / "results.md").read_text()
    assert "| temperature | n | linear top-1 |" in md and "2 of 2 cells finished" in md

    # Third run: everything is finished, nothing runs.
    def must_not_run(*a, **k):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(train, "train", must_not_run)
    monkeypatch.setattr(linear, "evaluate", must_not_run)
    assert main([plan, *FLAGS]) == 0

    # An edited plan must not reuse these results under the same names.
    edited = write_plan(tmp_path, PLAN.replace("epochs = 2", "epochs = 3"), name="edited.toml")
    with pytest.raises(SystemExit) as e:
        main([edited, *FLAGS])
    assert e.value.code == 2
    summary = json.loads((first / "pretrain" / "summary.json").read_text())
    assert summary["epochs_run"] == 2
