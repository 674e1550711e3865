"""Checkpoint files: atomic writes, clear errors on bad files, backbones in torchvision's format."""

import os

import pytest
import torch

from fastssl import checkpoint as ckpt
from fastssl.models import resnet18
from pipelines import DataError


def test_atomic_save_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "a.pt")
    ckpt.atomic_save({"x": torch.ones(3)}, path)
    ckpt.atomic_save({"x": torch.zeros(3)}, path)
    assert os.listdir(tmp_path) == ["a.pt"] and torch.load(path)["x"].sum() == 0


def test_truncated_and_missing_files_are_data_errors(tmp_path):
    path = tmp_path / "b.pt"
    ckpt.atomic_save({"x": torch.ones(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="cannot read checkpoint"):
        ckpt.load(str(path))
    with pytest.raises(DataError, match="not found"):
        ckpt.load(str(tmp_path / "missing.pt"))
    (tmp_path / "c.pt").write_text("not a checkpoint")
    with pytest.raises(DataError):
        ckpt.load_network(str(tmp_path / "c.pt"))


def test_export_and_reload_backbone(tmp_path):
    torch.manual_seed(0)
    for stem in ["cifar", "imagenet"]:
        net = resnet18(stem=stem).eval()
        path = str(tmp_path / f"{stem}.pt")
        ckpt.export_backbone(torch.compile(net), path)  # wrappers are unwrapped on save
        sd = torch.load(path)
        assert not any(k.startswith("_orig_mod") for k in sd)
        again, info = ckpt.load_network(path)
        assert info["stem"] == stem
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(net(x), again.eval()(x))


def test_exported_backbone_loads_into_torchvision(tmp_path):
    tv = pytest.importorskip("torchvision")
    path = str(tmp_path / "bb.pt")
    ckpt.export_backbone(resnet18(stem="imagenet"), path)
    missing, unexpected = tv.models.resnet18().load_state_dict(torch.load(path), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected


def test_resnet50_weights_are_recognised(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    src = tv.models.resnet50()  # an ImageNet-format state_dict, 1000-class fc included
    path = str(tmp_path / "tv50.pt")
    torch.save(src.state_dict(), path)
    net, info = ckpt.load_network(path)
    assert info["arch"] == "resnet50" and info["stem"] == "imagenet" and net.feature_dim == 2048
    src.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(net.eval()(x), src.eval()(x))
    net, info = ckpt.load_network("random", stem="cifar", arch="resnet50")
    assert info["arch"] == "resnet50" and net.feature_dim == 2048 and net.conv1.kernel_size == (3, 3)
    with pytest.raises(DataError, match="unknown backbone"):
        ckpt.load_network("random", arch="resnet34")
    torch.save(tv.models.resnet34().state_dict(), str(tmp_path / "tv34.pt"))
    with pytest.raises(DataError, match="another depth; supported: resnet18, resnet50"):
        ckpt.load_network(str(tmp_path / "tv34.pt"))
