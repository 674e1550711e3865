"""--split through every command: pretraining learns from the train part and monitors the validation
part, the probe and kNN learn from train + validation and score the test part, the split is recorded,
a backbone is never scored on images it was pretrained on, and bad --split strings exit 2."""

import json

import numpy as np
import pytest

from fastssl import pretrain
from fastssl.data import load_data
from fastssl.eval import knn, linear

BAD = ["80/10", "50/50/50", "80/-10/30", "-80/90/90", "eighty/10/10"]
PRE = [
    "--dataset",
    "imagefolder",
    "--stem",
    "imagenet",
    "--batch-size",
    "16",
    "--epochs",
    "1",
    "--warmup-epochs",
    "0",
    "--proj-hidden-dim",
    "32",
    "--proj-dim",
    "16",
    "--knn-every",
    "1",
    "--knn-k",
    "5",
    "--log-interval",
    "1",
    "--no-compile",
    "--device",
    "cpu",
    "--no-progress",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """--data-dir of a 4-class image folder, 10 train + 5 test images per class (15 pooled: 11/2/2 at 80/10/10)."""
    from test_experiment import image_folder  # the experiment tests' folder maker (same directory)

    return str(image_folder(tmp_path_factory.mktemp("data"), train_per_class=10, test_per_class=5))


@pytest.mark.parametrize("text", BAD)
@pytest.mark.parametrize(
    "command, extra",
    [(knn.main, ["--backbone", "random"]), (linear.main, ["--backbone", "random"]), (pretrain.main, [])],
)
def test_bad_split_exits_2_with_one_line(tmp_path, capsys, command, extra, text):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        command(
            [*extra, "--dataset", "cifar10-sample", f"--split={text}", "--out", str(out)]
            if command is not knn.main
            else [*extra, "--dataset", "cifar10-sample", f"--split={text}"]
        )
    err = capsys.readouterr().err.strip()
    assert (
        e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: --split") and text in err
    )
    assert not out.exists()


def test_load_data_parts_and_subset(folder):
    full = load_data("imagefolder", folder, "80/10/10", split_seed=1)
    assert [len(full.train), len(full.val), len(full.test)] == [44, 8, 8]
    small = load_data("imagefolder", folder, "80/10/10", split_seed=1, subset=8)
    assert len(small.train) == 8 and np.array_equal(np.bincount(small.train.labels), [2, 2, 2, 2])
    # the subset is drawn from the train part only: validation and test parts are unchanged
    assert np.array_equal(small.val.images, full.val.images) and np.array_equal(
        small.test.images, full.test.images
    )
    both, val_idx = full.labelled()
    assert np.array_equal(both.images[val_idx], full.val.images) and len(both) == 52
    assert full.info() == {
        "split": "80/10/10",
        "split_seed": 1,
        "train_images": 44,
        "val_images": 8,
        "test_images": 8,
    }
    official = load_data("imagefolder", folder)
    assert (
        official.labelled()[1] is None and official.info()["split_seed"] is None and len(official.test) == 20
    )


def test_pretrain_probe_and_knn_on_one_split(tmp_path, folder, capsys):
    run = tmp_path / "pre"
    assert pretrain.main([*PRE, "--data-dir", folder, "--split", "80/10/10", "--out", str(run)]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train_images"] == 44 and cfg["config"]["split"] == "80/10/10"
    assert cfg["split"] == {
        "split": "80/10/10",
        "split_seed": 0,
        "train_images": 44,
        "val_images": 8,
        "test_images": 8,
    }
    summary = json.loads((run / "summary.json").read_text())
    assert (
        summary["split"] == "80/10/10"
        and summary["val_knn_top1"] is not None
        and summary["knn_top1"] is not None
    )

    lin = tmp_path / "lin"
    assert (
        linear.main(
            [
                "--backbone",
                str(run),
                "--dataset",
                "imagefolder",
                "--data-dir",
                folder,
                "--split",
                "80/10/10",
                "--epochs",
                "2",
                "--batch-size",
                "16",
                "--lrs",
                "0.1",
                "--wds",
                "0",
                "--knn-k",
                "5",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(lin),
            ]
        )
        == 0
    )
    d = json.loads((lin / "summary.json").read_text())["data"]
    assert (d["train_images"], d["fit_images"], d["val_images"], d["test_images"]) == (52, 44, 8, 8)
    assert d["split"] == "80/10/10" and d["split_seed"] == 0
    assert json.loads((lin / "config.json").read_text())["config"]["split"] == "80/10/10"

    capsys.readouterr()
    assert (
        knn.main(
            [
                "--backbone",
                str(run),
                "--dataset",
                "imagefolder",
                "--data-dir",
                folder,
                "--split",
                "80/10/10",
                "--k",
                "5",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["test_images"] == 8 and out["split"] == "80/10/10" and out["voting_images"] == 44 + 8
    # kNN from the command = the pretraining run's final test score (same bank, same queries)
    assert out["top1"] == pytest.approx(summary["knn_top1"])

    # the official split's test images are in this backbone's pretraining part: refused
    for argv in (["--split", "official"], ["--split", "80/10/10", "--split-seed", "1"]):
        with pytest.raises(SystemExit) as e:
            knn.main(
                [
                    "--backbone",
                    str(run),
                    "--dataset",
                    "imagefolder",
                    "--data-dir",
                    folder,
                    "--device",
                    "cpu",
                    *argv,
                ]
            )
        err = capsys.readouterr().err.strip()
        assert (
            e.value.code == 2 and len(err.splitlines()) == 1 and "would test images it was trained on" in err
        )


def test_supervised_trains_on_the_train_part_and_scores_the_test_part(tmp_path, folder):
    from fastssl import supervised

    out = tmp_path / "scratch"
    assert (
        supervised.main(
            [
                "--dataset",
                "imagefolder",
                "--data-dir",
                folder,
                "--split",
                "80/10/10",
                "--stem",
                "imagenet",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--warmup-epochs",
                "0",
                "--knn-every",
                "0",
                "--log-interval",
                "1",
                "--no-compile",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    assert (
        s["data"]["split"] == "80/10/10" and s["data"]["train_images"] == 44 and s["data"]["test_images"] == 8
    )


@pytest.mark.parametrize(
    "command, extra",
    [
        (knn.main, ["--backbone", "random"]),
        (linear.main, ["--backbone", "random", "--out", "x"]),
        (pretrain.main, ["--out", "x"]),
    ],
)
def test_negative_split_seed_exits_2_with_one_line(tmp_path, capsys, monkeypatch, command, extra):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        command([*extra, "--dataset", "cifar10-sample", "--split", "80/10/10", "--split-seed", "-1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "--split-seed" in err, err
    assert not (tmp_path / "x").exists()
