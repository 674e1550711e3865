"""Weights out and in: backbone.safetensors and backbone.json beside backbone.pt, fastssl.load_backbone
(a torchvision model from any backbone file) and --init (a new run from given weights)."""

import json
import os
import subprocess

import pytest
import torch

import fastssl
from fastssl import checkpoint as ckpt
from fastssl import train as train_module
from fastssl.config import parse
from fastssl.models import resnet18, resnet50
from fastssl.pretrain import PretrainConfig, main
from fastssl.supervised import SupervisedConfig
from fastssl.train import RESUMABLE_CHANGES, train
from pipelines import DataError, datasets
from pipelines.files import sha256

tv = pytest.importorskip("torchvision")

TINY = [
    "--dataset",
    "cifar10-sample",
    "--subset",
    "32",
    "--batch-size",
    "16",
    "--epochs",
    "1",
    "--knn-every",
    "0",
    "--no-progress",
    "--no-compile",
    "--device",
    "cpu",
]


def run(config, out, *extra):
    argv = TINY + ["--out", str(out), *extra]
    return train(parse(config, argv), argv)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """One finished 1-epoch run, its backbone also exported as an epoch snapshot."""
    out = tmp_path_factory.mktemp("weights") / "source"
    run(PretrainConfig, out, "--backbone-every", "1")
    return out


def tensors(path):
    return ckpt.load(str(path))


class Stop(Exception):
    pass


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def trained(out):
    """The backbone of the run's last.pt, as fastssl's own ResNet-18."""
    state = ckpt.load_training_state(str(out / "last.pt"))
    net = resnet18(stem=state["config"]["stem"])
    net.load_state_dict({k[9:]: v for k, v in state["model"].items() if k.startswith("backbone.")})
    return net.eval()


def test_safetensors_and_pt_hold_identical_tensors(source):
    for name in ("backbone", "backbone_epoch001"):
        pt, st = tensors(source / f"{name}.pt"), tensors(source / f"{name}.safetensors")
        assert same(pt, st) and "layer4.1.bn2.running_var" in st
        assert (source / f"{name}.json").is_file()
    assert same(tensors(source / "backbone.pt"), dict(trained(source).state_dict()))


def test_backbone_json_describes_the_weights(source):
    about = json.loads((source / "backbone.json").read_text())
    train_data = datasets.load("cifar10-sample", "train")
    assert about == {
        "arch": "resnet18",
        "stem": "cifar",
        "feature_dim": 512,
        "mean": list(train_data.mean),
        "std": list(train_data.std),
        "image_size": 32,
        "method": "simclr",
        "dataset": "cifar10-sample",
        "epochs": 1,
        "init": None,
        "commit": about["commit"],
        "fastssl": fastssl.__version__,
    }
    repo = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=os.path.dirname(fastssl.__file__)
    )
    assert about["commit"] == (repo.stdout.strip() or None)  # None outside a git checkout


def test_load_backbone_gives_the_trained_network_from_each_source(source, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        want = trained(source)(x)
        plain = tmp_path / "torchvision_state_dict.pt"
        torch.save(fastssl.load_backbone(str(source)).state_dict(), plain)
        for path in (
            source,
            source / "backbone.safetensors",
            source / "backbone.pt",
            source / "last.pt",
            plain,
        ):
            model = fastssl.load_backbone(str(path))
            assert type(model) is tv.models.ResNet and not model.training, path
            assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, torch.nn.Identity)
            assert torch.equal(model(x), want), path
    # ImageNet-format weights keep torchvision's own stem, and the depth is read from the weights
    src = resnet50(stem="imagenet", num_classes=1000).eval()
    torch.save(src.state_dict(), tmp_path / "r50.pt")
    model = fastssl.load_backbone(str(tmp_path / "r50.pt"))
    src.fc = torch.nn.Identity()
    assert model.conv1.kernel_size == (7, 7) and torch.equal(model(x), src(x))
    with pytest.raises(DataError, match="not found"):
        fastssl.load_backbone(str(tmp_path / "missing.safetensors"))


def test_init_starts_a_new_run_from_the_given_weights_and_records_them(source, tmp_path, monkeypatch):
    """The weights entering the first step are the source's; config.json, last.pt (what a resumed
    run's config.json takes it from) and backbone.json record where they came from; --resume of such
    a run is not mistaken for --init with --resume."""
    first_step = []
    build_step = train_module.build_step

    def spy(run):  # called after the weights are set, before any step
        first_step.append({k: v.clone() for k, v in run.method.backbone.state_dict().items()})
        build_step(run)

    monkeypatch.setattr(train_module, "build_step", spy)
    out = tmp_path / "from_run"
    run(PretrainConfig, out, "--init", str(source))
    assert same(first_step[0], tensors(source / "backbone.pt"))
    assert not same(tensors(out / "backbone.pt"), first_step[0])  # and it trained from there
    record = {
        "path": str(source),
        "file": os.path.abspath(source / "backbone.pt"),
        "sha256": sha256(source / "backbone.pt"),
    }
    config = json.loads((out / "config.json").read_text())
    assert config["init"] == record and config["config"]["init"] == str(source)
    assert json.loads((out / "backbone.json").read_text())["init"] == record
    assert ckpt.load_training_state(str(out / "last.pt"))["init"] == record
    argv = ["--out", str(out), "--resume", "--device", "cpu"]
    train(parse(PretrainConfig, argv), argv)  # finished: nothing to do, and no refusal
    assert json.loads((out / "config.json").read_text())["init"] == record
    assert "init" not in RESUMABLE_CHANGES

    # fastssl.supervised shares the flag: a classifier on top of the given (.safetensors) backbone;
    # stopped before its first step, which is all this checks
    def stop(run):
        first_step.append({k: v.clone() for k, v in run.method.backbone.state_dict().items()})
        raise Stop

    monkeypatch.setattr(train_module, "build_step", stop)
    with pytest.raises(Stop):
        run(SupervisedConfig, tmp_path / "supervised", "--init", str(source / "backbone.safetensors"))
    assert same(first_step[1], tensors(source / "backbone.pt"))


def test_bad_init_is_one_line_exit_2_and_leaves_out_untouched(tmp_path, capsys):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "config.json").write_text('{"old": true}')
    (out / "last.pt").write_bytes(b"old weights")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    torch.save({k: torch.zeros(1) for k in resnet50().state_dict()}, tmp_path / "r50.pt")
    torch.save(resnet18(stem="imagenet").state_dict(), tmp_path / "imagenet_stem.pt")
    cases = [
        (tmp_path / "missing.pt", "not found"),
        (tmp_path / "garbage.pt", "cannot read"),
        (tmp_path / "garbage.safetensors", "cannot read"),
        (tmp_path / "r50.pt", "holds resnet50 weights; this run's backbone is resnet18"),
        (tmp_path / "imagenet_stem.pt", "the other stem"),
    ]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for path, words in cases:
        with pytest.raises(SystemExit) as e:
            main(TINY + ["--out", str(out), "--overwrite", "--init", str(path)])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and err.startswith("error: --init") and words in err, err
        assert len(err.splitlines()) == 1, err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    with pytest.raises(SystemExit) as e:
        main(["--out", str(out), "--resume", "--init", str(tmp_path / "r50.pt")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "cannot be combined with --resume" in err and len(err.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
