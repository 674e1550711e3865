"""The training loop: loss goes down, resume is bit-exact, the run directory is complete, and bad
input ends in one line on stderr with exit code 2 without touching existing outputs."""

import json
import os
import subprocess
import sys

import pytest
import torch

import pipelines
from fastssl import checkpoint as ckpt
from fastssl.config import parse
from fastssl.pretrain import PretrainConfig, main
from fastssl.train import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [
    "--dataset",
    "cifar10-sample",
    "--subset",
    "64",
    "--batch-size",
    "32",
    "--proj-hidden-dim",
    "64",
    "--proj-dim",
    "32",
    "--no-progress",
    "--no-compile",
    "--device",
    "cpu",
    "--log-interval",
    "1",
]


def run(tmp_path, *extra, name="run"):
    argv = TINY + ["--out", str(tmp_path / name), *extra]
    return train(parse(PretrainConfig, argv), argv), tmp_path / name


def losses(run_dir, epoch=None):
    recs = ckpt.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    return [r["loss"] for r in recs if "loss" in r and (epoch is None or r["epoch"] == epoch)]


def test_loss_goes_down_and_run_dir_complete(tmp_path):
    result, out = run(tmp_path, "--epochs", "6", "--lr", "2.0", "--warmup-epochs", "1", "--knn-every", "3")
    recs = ckpt.read_jsonl(out / "metrics.jsonl")
    epochs = [r for r in recs if r.get("summary")]
    assert len(epochs) == 6 and epochs[-1]["epoch_loss"] < epochs[0]["epoch_loss"]
    # The monitor scores the validation split; the test split only the final network.
    assert "val_knn_top1" in epochs[2] and "val_knn_top1" in epochs[5] and "val_knn_top1" not in epochs[0]
    assert "knn_top1" in epochs[5] and not any("knn_top1" in e for e in epochs[:5])
    best = torch.load(out / "best.pt", weights_only=False)
    assert (
        best["epoch"]
        == max((e for e in epochs if "val_knn_top1" in e), key=lambda e: e["val_knn_top1"])["epoch"]
    )
    for name in ["config.json", "metrics.jsonl", "last.pt", "best.pt", "backbone.pt", "summary.json"]:
        assert (out / name).is_file(), name
    info = json.loads((out / "config.json").read_text())
    assert info["config"]["epochs"] == 6 and info["steps_per_epoch"] == 2
    sd = torch.load(out / "backbone.pt")
    assert "layer4.1.bn2.running_var" in sd and not any(
        k.startswith(("_orig_mod", "module", "fc")) for k in sd
    )
    assert 0 <= result["knn_top1"] <= 100
    # whole epochs are timed; the part spent waiting for the loader is recorded beside it
    assert all(0 <= e["epoch_data_wait_s"] <= e["epoch_time_s"] for e in epochs)


def test_backbone_every_exports_snapshots_that_equal_the_final_weights_at_the_end(tmp_path):
    _, out = run(tmp_path, "--epochs", "4", "--knn-every", "0", "--backbone-every", "2")
    assert sorted(p.name for p in out.glob("backbone_epoch*.pt")) == [
        "backbone_epoch002.pt",
        "backbone_epoch004.pt",
    ]
    final, last = torch.load(out / "backbone.pt"), torch.load(out / "backbone_epoch004.pt")
    assert final.keys() == last.keys() and all(torch.equal(final[k], last[k]) for k in final)
    mid = torch.load(out / "backbone_epoch002.pt")
    assert not torch.equal(mid["conv1.weight"], final["conv1.weight"])


class Interrupt(Exception):
    pass


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    common = ["--epochs", "3", "--knn-every", "0"]
    run(tmp_path, *common, name="straight")

    real_build = pipelines.build

    def build_that_stops(*a, **kw):  # simulates a crash right after epoch 1's checkpoint
        loader = real_build(*a, **kw)
        set_epoch = loader.set_epoch

        def stop_at_2(e):
            if e == 2:
                raise Interrupt
            set_epoch(e)

        loader.set_epoch = stop_at_2
        return loader

    monkeypatch.setattr(pipelines, "build", build_that_stops)
    with pytest.raises(Interrupt):
        run(tmp_path, *common, name="resumed")
    monkeypatch.setattr(pipelines, "build", real_build)
    assert len(losses(tmp_path / "resumed")) == 4
    run(tmp_path, *common, "--resume", name="resumed")

    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")  # bit-identical floats
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_settings(tmp_path, capsys):
    run(tmp_path, "--epochs", "1", "--knn-every", "0")
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "run"), "--resume", "--temperature", "0.9"])
    assert e.value.code == 2 and "temperature" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--batch-size", "4096"], "batch"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
        (["--epochs", "-1"], "epochs"),
        (["--pipeline", "nope"], "gpu"),
    ],
)
def test_bad_input_exit_2(tmp_path, capsys, extra, words):
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--out", str(tmp_path / "x"), "--epochs", "1", *extra])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and words in err
    assert not (tmp_path / "x").exists()


def test_existing_out_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--out", str(out), "--epochs", "1"])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep"


def test_cli_subprocess_no_traceback(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "fastssl.pretrain", "--epochs", "0", "--out", str(tmp_path / "y")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.startswith("error:")
    h = subprocess.run(
        [sys.executable, "-m", "fastssl.pretrain", "--help"], capture_output=True, text=True, cwd=REPO
    )
    for flag in [
        "--dataset",
        "--data-dir",
        "--subset",
        "--epochs",
        "--batch-size",
        "--lr",
        "--temperature",
        "--pipeline",
        "--device",
        "--compile",
        "--no-compile",
        "--seed",
        "--out",
        "--resume",
    ]:
        assert flag in h.stdout


def test_monitor_split_is_stratified_disjoint_and_leaves_out_unlabelled():
    import numpy as np

    from fastssl.train import monitor_split
    from pipelines.data import arrays

    labels = np.repeat(np.arange(4), 50)
    labels[::7] = -1  # unlabelled images (cifar10+cifar100) are neither queries nor voters
    images = (
        np.arange(len(labels), dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3)
    )
    data = arrays.ArrayDataset(images, labels, list("abcd"), "toy", (0.5,) * 3, (0.25,) * 3)
    bank, val = monitor_split(data, 0.2, seed=3)
    ids_bank, ids_val = set(bank.images[:, 0, 0, 0]), set(val.images[:, 0, 0, 0])
    assert not ids_bank & ids_val and ids_bank | ids_val == set(np.flatnonzero(labels >= 0))
    for c in range(4):
        n = (labels == c).sum()
        assert (val.labels == c).sum() == round(0.2 * n)
    again = monitor_split(data, 0.2, seed=3)[1]
    assert np.array_equal(again.images, val.images)  # a pure function of (labels, fraction, seed)
