"""Unlabelled photo collections through the commands: convert records "labels": "none" and reads
back exactly, pretrain runs without the kNN monitor (and refuses it up front), knn and linear refuse
with one line and exit 2."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from fastssl import convert, pretrain, supervised
from fastssl.eval import knn, linear
from pipelines import datasets
from pipelines.data import imagefolder
from pipelines.data.arrays import UNLABELLED

RUN = ["--epochs", "1", "--batch-size", "10", "--device", "cpu", "--no-compile", "--no-progress"]


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """20 PNGs of 16x16 random pixels directly in one folder."""
    root = tmp_path_factory.mktemp("flat")
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return str(root)


def one_line_exit_2(main, argv, capsys, match):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and match in err, err


@pytest.mark.parametrize("to", ["ffcv", "dali"])
def test_convert_records_no_labels_and_reads_back_exactly(flat, tmp_path, to):
    pytest.importorskip({"ffcv": "ffcv", "dali": "nvidia.dali"}[to])
    out = str(tmp_path / ("flat_train.beton" if to == "ffcv" else "flat_train"))
    argv = ["--dataset", "imagefolder", "--data-dir", flat, "--to", to, "--out", out, "--encoding", "raw"]
    assert convert.main(argv + ["--order", "source", "--workers", "1"]) == 0
    m = manifest_of(to, out)
    assert m["labels"] == "none" and m["classes"] == [] and m["count"] == 20
    data = datasets.load(out, "train")
    assert (data.labels == UNLABELLED).all()
    images, labels = contract_read(to, out)
    np.testing.assert_array_equal(images, imagefolder.read_imagefolder("train", flat).images)
    assert (labels == UNLABELLED).all()


def manifest_of(to, out):
    with open(os.path.join(out, "manifest.json") if to == "dali" else out + ".manifest.json") as f:
        return json.load(f)


def contract_read(to, out):
    from pipelines.formats import contract

    return contract.module(to).read(out, np.arange(20))


def test_pretrain_runs_without_the_monitor_and_refuses_it(flat, tmp_path, capsys):
    out = str(tmp_path / "run")
    argv = ["--dataset", "imagefolder", "--data-dir", flat, "--out", out, *RUN]
    assert pretrain.main(argv + ["--knn-every", "0"]) == 0
    with open(os.path.join(out, "summary.json")) as f:
        assert np.isfinite(json.load(f)["final_loss"])
    refused = str(tmp_path / "refused")
    one_line_exit_2(pretrain.main, argv[: -len(RUN) - 1] + [refused, *RUN], capsys, "--knn-every 0")
    assert not os.path.exists(refused)


def test_knn_and_linear_refuse_unlabelled_data(flat, tmp_path, capsys):
    data = ["--backbone", "random", "--dataset", "imagefolder", "--data-dir", flat, "--device", "cpu"]
    one_line_exit_2(knn.main, data, capsys, "fastssl.knn needs labelled images")
    out = str(tmp_path / "linear")
    one_line_exit_2(linear.main, data + ["--out", out], capsys, "fastssl.linear needs labelled images")
    assert not os.path.exists(out)


def test_convert_streams_a_nested_collection_as_images(flat, tmp_path, capsys):
    pytest.importorskip("nvidia.dali")
    nested = tmp_path / "trip"
    for i, day in enumerate(["day1", "day2", "day2/evening"]):
        (nested / day).mkdir(parents=True)
        Image.open(os.path.join(flat, f"{i:03d}.png")).save(nested / day / f"{i}.jpg")
    out = str(tmp_path / "trip_dali" / "train")
    assert convert.main(["--dataset", "images", "--data-dir", str(nested), "--to", "dali", "--out", out]) == 0
    assert "no labels" in capsys.readouterr().out
    m = manifest_of("dali", out)
    assert (m["labels"], m["classes"], m["count"], m["name"]) == ("none", [], 3, "images")
    assert (datasets.load(out, "train").labels == UNLABELLED).all()


def test_supervised_refuses_unlabelled_data(flat, tmp_path, capsys):
    out = str(tmp_path / "sup")
    argv = ["--dataset", "imagefolder", "--data-dir", flat, "--out", out, "--knn-every", "0", *RUN]
    one_line_exit_2(supervised.main, argv, capsys, "supervised training needs labelled images")
    assert not os.path.exists(out)
