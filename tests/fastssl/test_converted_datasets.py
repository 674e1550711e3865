"""--dataset PATH end to end: a generated folder of JPEGs and PNGs of mixed sizes -> python -m
fastssl.convert (FFCV and DALI, train and test) -> one pretraining epoch with each streaming
pipeline -> kNN, linear probe and supervised training on the same files; counts and labels exact.
Bad inputs are one stderr line and exit code 2, with nothing written."""

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("nvidia.dali")
pytest.importorskip("ffcv")
from benchmarks.memory import make_folder  # noqa: E402
from fastssl import convert, knn, linear, pretrain, supervised  # noqa: E402
from pipelines import datasets  # noqa: E402

N_TRAIN, N_TEST = 30, 9
FAST = [
    "--epochs",
    "1",
    "--batch-size",
    "10",
    "--stem",
    "imagenet",
    "--image-size",
    "32",
    "--device",
    "cpu",
    "--no-compile",
    "--no-progress",
    "--workers",
    "1",
    "--knn-every",
    "1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("conv")
    folder = make_folder(str(root / "photos"), N_TRAIN, N_TEST, sides=(40, 120), seed=1)
    paths = {"ffcv": str(root / "photos_train.beton"), "dali": str(root / "dali" / "train")}
    for to, path in paths.items():  # FFCV first: its writer forks, best before DALI's threads exist
        for split in ("train", "test"):
            assert (
                convert.main(
                    [
                        "--dataset",
                        "imagefolder",
                        "--data-dir",
                        folder,
                        "--split",
                        split,
                        "--to",
                        to,
                        "--out",
                        path.replace("train", split),
                        "--max-resolution",
                        "100",
                    ]
                )
                == 0
            )
    return root, folder, paths


def folder_labels(folder, split):
    classes = sorted(os.listdir(os.path.join(folder, "train")))
    return [c for c, name in enumerate(classes) for _ in os.listdir(os.path.join(folder, split, name))]


@pytest.mark.parametrize("pipeline", ["ffcv", "dali"])
def test_convert_pretrain_and_knn_round_trip(data, pipeline, capsys):
    root, folder, paths = data
    out = str(root / f"run_{pipeline}")
    pretrain.main(["--dataset", paths[pipeline], "--pipeline", pipeline, "--out", out, *FAST])
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert config["train_images"] == N_TRAIN and config["steps_per_epoch"] == N_TRAIN // 10
    assert (
        summary["epochs_run"] == 1 and summary["knn_top1"] is not None and np.isfinite(summary["final_loss"])
    )
    # scored on the 9 test images: a multiple of 100/9
    assert abs(summary["knn_top1"] * N_TEST / 100 - round(summary["knn_top1"] * N_TEST / 100)) < 1e-4
    capsys.readouterr()
    # Evaluated at the run's view side (32, recorded in config.json; the default would be 96), so the
    # command's score is the monitor's final test score: same bank, test images, k and crops.
    assert config["image_size"] == 32
    assert knn.main(["--backbone", out, "--dataset", paths[pipeline], "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["train_images"], result["test_images"]) == (N_TRAIN, N_TEST)
    assert result["image_size"] == [32, 32] and abs(result["top1"] - summary["knn_top1"]) < 1e-9
    assert abs(result["top5"] - summary["knn_top5"]) < 1e-9
    assert (
        knn.main(["--backbone", out, "--dataset", paths[pipeline], "--device", "cpu", "--image-size", "40"])
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["image_size"] == [40, 40]
    for split in ("train", "test"):  # the labels the commands see are the folder's, in the stored order
        labels = np.asarray(folder_labels(folder, split))
        order = np.random.default_rng(0).permutation(len(labels))  # --order shuffled, --order-seed 0
        np.testing.assert_array_equal(datasets.load(paths[pipeline], split).labels, labels[order])


def test_linear_and_supervised_take_a_converted_dataset(data):
    root, _, paths = data
    out = str(root / "linear")
    assert (
        linear.main(
            [
                "--backbone",
                "random",
                "--dataset",
                paths["dali"],
                "--device",
                "cpu",
                "--epochs",
                "2",
                "--lrs",
                "0.1",
                "--wds",
                "0",
                "--out",
                out,
                "--no-progress",
                "--knn-k",
                "5",
            ]
        )
        == 0
    )
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    assert (s["data"]["train_images"], s["data"]["test_images"]) == (N_TRAIN, N_TEST)
    assert s["data"]["image_size"] == [96, 96]  # no run to follow, largest side 100 < 224: the small default
    out = str(root / "supervised")
    supervised.main(["--dataset", paths["dali"], "--pipeline", "dali", "--out", out, *FAST])
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    assert s["data"]["test_images"] == N_TEST and 0 <= s["test_top1"] <= 100


def refused(main, argv, capsys, match, out=None):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and match in err, err
    if out is not None:
        assert not os.path.exists(out)
    return err


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(data, tmp_path, capsys):
    _, _, paths = data
    out = str(tmp_path / "run")
    beton = str(tmp_path / "cut_train.beton")
    shutil.copy(paths["ffcv"], beton)
    shutil.copy(paths["ffcv"] + ".manifest.json", beton + ".manifest.json")
    with open(beton, "r+b") as f:
        f.truncate(os.path.getsize(beton) - 100)
    assert beton in refused(
        pretrain.main, ["--dataset", beton, "--pipeline", "ffcv", "--out", out, *FAST], capsys, "error:", out
    )
    shards = str(tmp_path / "dali_train")
    shutil.copytree(paths["dali"], shards)
    os.remove(os.path.join(shards, "shard-00000.tar"))
    refused(
        knn.main, ["--backbone", "random", "--dataset", shards, "--device", "cpu"], capsys, "missing shard"
    )
    shutil.copytree(paths["dali"], shards, dirs_exist_ok=True)
    idx = os.path.join(shards, "shard-00000.idx")
    with open(idx, "a") as f:
        f.write("garbage line\n")
    refused(
        pretrain.main,
        ["--dataset", shards, "--pipeline", "dali", "--out", out, *FAST],
        capsys,
        "corrupt index",
        out,
    )
    shutil.copytree(paths["dali"], shards, dirs_exist_ok=True)
    with open(os.path.join(shards, "shard-00000.tar"), "r+b") as f:
        f.seek(600)
        f.write(b"\xff")
    refused(
        linear.main,
        ["--backbone", "random", "--dataset", shards, "--device", "cpu", "--out", out],
        capsys,
        "checksum differs",
        out,
    )
    refused(
        pretrain.main,
        ["--dataset", paths["dali"], "--pipeline", "gpu", "--out", out, *FAST],
        capsys,
        "use --pipeline dali",
        out,
    )
    refused(
        pretrain.main,
        ["--dataset", paths["ffcv"], "--pipeline", "dali", "--out", out, *FAST],
        capsys,
        "use --pipeline ffcv",
        out,
    )
    refused(
        pretrain.main,
        ["--dataset", str(tmp_path / "none.beton"), "--out", out, *FAST],
        capsys,
        "no such converted dataset",
        out,
    )
    refused(
        knn.main,
        ["--backbone", "random", "--dataset", "cifar10-sample", "--device", "cpu", "--image-size", "64"],
        capsys,
        "--image-size applies to converted datasets",
    )
