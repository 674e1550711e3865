"""Supervised from scratch: its config is pretraining's minus SimCLR fields, a tiny run trains,
and the test accuracy in summary.json equals an independent evaluation of last.pt."""

import json
from dataclasses import fields

import numpy as np
import pytest
import torch

from fastssl import checkpoint as ckpt
from fastssl.config import ConfigError, parse
from fastssl.methods import METHODS
from fastssl.pretrain import PretrainConfig
from fastssl.supervised import SIMCLR_ONLY, SupervisedConfig, main
from pipelines import datasets

TINY = [
    "--dataset",
    "imagefolder",
    "--batch-size",
    "16",
    "--epochs",
    "2",
    "--stem",
    "imagenet",
    "--warmup-epochs",
    "0",
    "--knn-every",
    "1",
    "--knn-k",
    "10",
    "--log-interval",
    "1",
    "--device",
    "cpu",
    "--no-compile",
    "--no-progress",
]


@pytest.fixture
def folder(tmp_path):
    """A 4-class image folder (8 train, 16 test images per class) cut from the CIFAR-10 sample."""
    from PIL import Image

    for split, n in (("train", 8), ("test", 16)):
        data = datasets.load("cifar10-sample", split)
        for c in range(4):
            (tmp_path / "data" / split / data.classes[c]).mkdir(parents=True)
            for i, j in enumerate(np.flatnonzero(data.labels == c)[:n]):
                Image.fromarray(data.images[j]).save(tmp_path / "data" / split / data.classes[c] / f"{i}.png")
    return str(tmp_path / "data")


def test_config_is_pretrain_config_minus_simclr_fields():
    pre = {f.name: f for f in fields(PretrainConfig)}
    sup = {f.name: f for f in fields(SupervisedConfig)}
    assert set(sup) == set(pre) - SIMCLR_ONLY
    cfg = SupervisedConfig()
    assert (cfg.method, cfg.optimizer, cfg.dataset, cfg.lr, cfg.weight_decay) == (
        "supervised",
        "sgd",
        "cifar100",
        0.2,
        5e-4,
    )
    assert sup["data_dir"].metadata == pre["data_dir"].metadata  # help and choices carried over
    with pytest.raises(ConfigError, match="epochs"):  # pretraining's validation applies
        parse(SupervisedConfig, ["--epochs", "0"])
    with pytest.raises(ConfigError, match="supervised"):
        parse(SupervisedConfig, ["--method", "simclr"])
    with pytest.raises(ConfigError, match="temperature"):
        parse(SupervisedConfig, ["--temperature", "0.5"])


def reference_test_accuracy(run_dir, cfg):
    """Top-1/top-5 of last.pt on the test split, normalising by hand in float64 numpy."""
    test = datasets.load("imagefolder", "test", cfg.data_dir)
    method = METHODS["supervised"](cfg, len(test.classes))
    method.load_state_dict(ckpt.load(str(run_dir / "last.pt"))["model"])
    method.eval()
    x = (test.images.astype(np.float64) / 255 - np.array(test.mean)) / np.array(test.std)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2)).float()
    with torch.no_grad():
        logits = method.classifier(method.backbone(x))
    top5 = logits.topk(min(5, logits.shape[1]), 1).indices
    y = torch.from_numpy(test.labels)
    return (
        100 * (top5[:, 0] == y).float().mean().item(),
        100 * (top5 == y[:, None]).any(1).float().mean().item(),
        len(y),
    )


def test_tiny_run_scores_test_set(tmp_path, folder, capsys):
    out = tmp_path / "scratch"
    argv = TINY + ["--data-dir", folder, "--out", str(out)]
    assert main(argv) == 0
    assert "test top-1" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    assert (
        s["protocol"] == "supervised" and s["evaluated_epoch"] == 1 and s["data"]["label"] == "image folder"
    )
    assert s["backbone"]["kind"] == "supervised" and "from scratch" in s["backbone"]["label"]
    cfg = parse(SupervisedConfig, argv)
    top1, top5, n = reference_test_accuracy(out, cfg)
    one_image = 100 / n  # float32 vs float64 normalisation may flip a near-tie
    assert s["test_top1"] == pytest.approx(top1, abs=one_image) and s["test_top5"] == pytest.approx(
        top5, abs=one_image
    )
    epochs = [r for r in ckpt.read_jsonl(str(out / "metrics.jsonl")) if r.get("summary")]
    assert len(epochs) == 2 and "epoch_acc" in epochs[0] and "knn_top1" in epochs[1]
    info = json.loads((out / "config.json").read_text())
    assert (
        info["command"][:3] == ["python", "-m", "fastssl.supervised"]
        and info["config"]["method"] == "supervised"
    )
