"""The linear-protocol command: torchvision-format and ImageNet backbones, the stratified validation
split, CIFAR-100 copy detection, and bad input ending in one line with exit code 2."""

import hashlib
import json
import urllib.error

import numpy as np
import pytest
import torch

from fastssl.eval import linear
from fastssl.eval.linear import IMAGENET_URL, dataset_label, main, validation_indices
from pipelines import datasets

FAST = [
    "--dataset",
    "imagefolder",
    "--epochs",
    "4",
    "--batch-size",
    "16",
    "--lrs",
    "0.1,1",
    "--wds",
    "0,1e-4",
    "--knn-k",
    "20",
    "--device",
    "cpu",
    "--no-progress",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """--data-dir of a 4-class image folder (10 train, 5 test images per class) cut from the CIFAR-10 sample."""
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    for split, n in (("train", 10), ("test", 5)):
        data = datasets.load("cifar10-sample", split)
        for c in range(4):
            (root / split / data.classes[c]).mkdir(parents=True)
            for i, j in enumerate(np.flatnonzero(data.labels == c)[:n]):
                Image.fromarray(data.images[j]).save(root / split / data.classes[c] / f"{i}.png")
    return ["--data-dir", str(root)]


@pytest.fixture(scope="module")
def tv_state_dict(tmp_path_factory):
    """A randomly initialised ResNet-18 in torchvision's format (7x7 stem, fc included), as a file."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18_random.pth"
    torch.save(tv.models.resnet18().state_dict(), path)
    return str(path)


def test_torchvision_state_dict_file(tmp_path, tv_state_dict, folder):
    out = tmp_path / "lin"
    assert main(FAST + folder + ["--backbone", tv_state_dict, "--resize", "40", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert (
        s["protocol"] == "linear"
        and s["backbone"]["stem"] == "imagenet"
        and s["backbone"]["kind"] == "state_dict"
    )
    # a foreign 7x7-stem network is taken as ImageNet-trained: ImageNet statistics, recorded with the resize
    assert s["data"]["normalization"] == {
        "source": "imagenet",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    assert s["data"]["resize"] == 40 and s["feature_dim"] == 512
    assert s["data"]["fit_images"] + s["data"]["val_images"] == s["data"]["train_images"]
    assert 0 <= s["test_top1"] <= s["test_top5"] <= 100 and 0 <= s["knn_top1"] <= 100
    assert s["lr"] in (0.1, 1.0) and s["weight_decay"] in (0.0, 1e-4) and len(s["grid"]) == 4
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in recs] == ["grid"] * 4 + ["final"] * 4
    assert len(recs[0]["val_top1"]) == 4 and recs[-1]["test_top1"] == pytest.approx(s["test_top1"], abs=1e-4)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    clf = torch.load(out / "classifier.pt")
    assert clf["weight"].shape == (4, 512) and clf["feature_mean"].shape == (512,)
    info = json.loads((out / "config.json").read_text())
    assert info["command"][:3] == ["python", "-m", "fastssl.linear"] and info["config"]["resize"] == 40


def test_imagenet_backbone_from_weights_file(tmp_path, tv_state_dict, folder):
    out = tmp_path / "lin"
    assert (
        main(FAST + folder + ["--backbone", "imagenet", "--weights", tv_state_dict, "--out", str(out)]) == 0
    )
    s = json.loads((out / "summary.json").read_text())
    assert s["backbone"]["kind"] == "imagenet" and "IMAGENET1K_V1" in s["backbone"]["label"]
    assert s["data"]["normalization"]["source"] == "imagenet" and s["data"]["resize"] is None


def test_imagenet_offline_without_file_is_one_clear_error(tmp_path, folder, monkeypatch, capsys):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(SystemExit) as e:
        main(FAST + folder + ["--backbone", "imagenet", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and IMAGENET_URL in err and "--weights" in err
    assert not (tmp_path / "x").exists()


def test_imagenet_url_is_torchvisions():
    tv_models = pytest.importorskip("torchvision.models")
    assert tv_models.ResNet18_Weights.IMAGENET1K_V1.url == IMAGENET_URL


def test_validation_split_is_stratified_and_disjoint():
    train = datasets.load("cifar10-sample", "train")
    test = datasets.load("cifar10-sample", "test")
    val = validation_indices(train.labels, 0.1, seed=3).numpy()
    assert len(np.unique(val)) == len(val) and val.min() >= 0 and val.max() < len(train.labels)
    for c in range(10):  # every class keeps its share (+-1 for rounding)
        n_c = (train.labels == c).sum()
        assert abs((train.labels[val] == c).sum() - 0.1 * n_c) <= 1
    assert np.array_equal(val, validation_indices(train.labels, 0.1, seed=3).numpy())  # reproducible
    assert not np.array_equal(val, validation_indices(train.labels, 0.1, seed=4).numpy())
    # validation images come from the training split only: none of them is a test image
    test_hashes = {hashlib.md5(img.tobytes()).digest() for img in test.images}
    assert not any(hashlib.md5(train.images[i].tobytes()).digest() in test_hashes for i in val)


def test_cifar100_copy_is_labelled(tmp_path, monkeypatch):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    (d / "train").write_bytes(b"pixels decoded from JPEG")
    (d / "test").write_bytes(b"more pixels")
    assert dataset_label("cifar100", str(tmp_path)) == {
        "label": "CIFAR-100 (JPEG-recompressed copy)",
        "official_files": False,
    }
    assert dataset_label("cifar100", str(tmp_path), note="my note")["label"] == "CIFAR-100 (my note)"
    assert dataset_label("cifar10", str(tmp_path))["label"] == "CIFAR-10"
    md5 = {s: hashlib.md5((d / s).read_bytes()).hexdigest() for s in ("train", "test")}
    monkeypatch.setattr(linear, "CIFAR100_MD5", md5)  # pretend these are the official files
    assert dataset_label("cifar100", str(tmp_path)) == {"label": "CIFAR-100", "official_files": True}


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--backbone", "/nonexistent/backbone.pt"], "/nonexistent/backbone.pt"),
        (["--backbone", "random", "--val-fraction", "1.5"], "val-fraction"),
        (["--backbone", "random", "--lrs", "0.1,x"], "lrs"),
        (["--backbone", "random", "--dataset", "cifar100", "--data-dir", "{broken}"], "cifar-100-python"),
        (["--backbone", "random", "--weights", "w.pth"], "--weights"),
        ([], "--backbone"),
    ],
)
def test_bad_input_exit_2(tmp_path, folder, capsys, extra, words):
    broken = tmp_path / "data" / "cifar-100-python"  # present but damaged: reported, never downloaded over
    broken.mkdir(parents=True)
    (broken / "meta").write_bytes(b"not a pickle")
    extra = [a.replace("{broken}", str(broken.parent)) for a in extra]
    with pytest.raises(SystemExit) as e:
        main(FAST + folder + ["--out", str(tmp_path / "x"), *extra])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and words in err
    assert not (tmp_path / "x").exists()


def test_existing_out_is_refused(tmp_path, folder, capsys):
    out = tmp_path / "lin"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(SystemExit) as e:
        main(FAST + folder + ["--backbone", "random", "--out", str(out)])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep"


def test_label_names_split_and_its_seed(tmp_path):
    """Backbones pretrained on two draws of one split are different settings: never averaged."""
    labels = []
    for split, seed in (("80/10/10", 0), ("80/10/10", 1), ("official", 0)):
        run = tmp_path / f"{split.replace('/', '-')}_{seed}"
        run.mkdir()
        cfg = {
            "method": "simclr",
            "dataset": "cifar10",
            "epochs": 1,
            "batch_size": 8,
            "temperature": 0.2,
            "seed": 0,
            "split": split,
            "split_seed": seed,
        }
        (run / "config.json").write_text(json.dumps({"config": cfg}))
        labels.append(linear.describe_backbone(str(run), {"source": str(run), "stem": "cifar"})["label"])
    assert len(set(labels)) == 3 and "split 80/10/10 seed 1" in labels[1] and "split" not in labels[2], labels
