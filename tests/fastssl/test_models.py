"""ResNet-18 and ResNet-50 against torchvision's: names, shapes, initialisation, weights both ways, outputs."""

import pytest
import torch
from torch import nn

from fastssl.models import BACKBONES, ProjectionHead, arch_of, load_torchvision_state_dict, resnet18, resnet50

ARCHS = ["resnet18", "resnet50"]
# Published parameter counts of torchvision's ImageNet models (1000-class fc): 11.69M and 25.56M.
TV_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032}
FEATURES = {"resnet18": (512, 256), "resnet50": (2048, 1024)}  # pooled features, layer3 channels


def tv_model(arch, **kw):
    return getattr(pytest.importorskip("torchvision").models, arch)(**kw)


def tv_resnet18(**kw):
    return tv_model("resnet18", **kw)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_output_shapes(stem, arch):
    torch.manual_seed(0)
    dim, c3 = FEATURES[arch]
    features, classifier = (
        BACKBONES[arch](stem=stem).eval(),
        BACKBONES[arch](stem=stem, num_classes=10).eval(),
    )
    assert (
        isinstance(features.fc, nn.Identity)
        and features.feature_dim == dim
        and features.layer3_channels == c3
    )
    assert isinstance(classifier.fc, nn.Linear) and classifier.fc.in_features == dim
    with torch.no_grad():
        for size in [32, 64]:
            x = torch.randn(2, 3, size, size)
            c, y = features.forward_layer3(x)  # what forward returns, with the layer3 map DIM uses
            side = size // 4 if stem == "cifar" else size // 16
            assert c.shape == (2, c3, side, side) and y.shape == (2, dim)
            assert classifier(x).shape == (2, 10)
    assert torch.equal(features(x), y)


def test_registry_and_bad_arguments():
    assert BACKBONES == {"resnet18": resnet18, "resnet50": resnet50}
    for arch in BACKBONES.values():
        with pytest.raises(ValueError, match="stem"):
            arch(stem="tiny")
        with pytest.raises(ValueError, match="num_classes"):
            arch(num_classes=-1)


@pytest.mark.parametrize("arch", ARCHS)
def test_names_shapes_and_count_match_torchvision(arch):
    tv = tv_model(arch).state_dict()
    assert n_params(tv_model(arch)) == n_params(BACKBONES[arch]("imagenet", 1000)) == TV_PARAMS[arch]
    ours = BACKBONES[arch]("imagenet", 1000).state_dict()
    assert list(ours) == list(tv)  # parameters and BN buffers, same order
    assert all(ours[k].shape == tv[k].shape for k in tv)
    cifar = BACKBONES[arch]("cifar", 1000).state_dict()
    assert list(cifar) == list(tv)
    assert [k for k in tv if cifar[k].shape != tv[k].shape] == ["conv1.weight"]
    assert cifar["conv1.weight"].shape == (64, 3, 3, 3)
    # The SimCLR backbone: fc = Identity has no parameters.
    assert list(BACKBONES[arch]("cifar").state_dict()) == [k for k in tv if not k.startswith("fc.")]


@pytest.mark.parametrize("arch", ARCHS)
def test_seeded_initialisation_equals_torchvision(arch):
    torch.manual_seed(3)
    tv = tv_model(arch).state_dict()
    torch.manual_seed(3)
    ours = BACKBONES[arch]("imagenet", 1000).state_dict()
    assert all(torch.equal(ours[k], tv[k]) for k in tv)
    conv = ours["layer3.1.conv2.weight"]  # kaiming_normal fan_out: std = sqrt(2 / (256 * 3 * 3))
    assert abs(conv.std().item() / (2 / (256 * 9)) ** 0.5 - 1) < 0.02
    assert (ours["bn1.weight"] == 1).all() and (ours["bn1.bias"] == 0).all()


def test_zero_init_residual():
    net = resnet18(zero_init_residual=True)
    assert all(
        (net.get_submodule(f"layer{i}.{j}").bn2.weight == 0).all() for i in range(1, 5) for j in range(2)
    )
    assert (resnet18().layer1[0].bn2.weight == 1).all()
    # ResNet-50: the last BN of each Bottleneck (bn3), as torchvision's zero_init_residual
    net, blocks = resnet50(zero_init_residual=True), (3, 4, 6, 3)
    assert all(
        (net.get_submodule(f"layer{i + 1}.{j}").bn3.weight == 0).all()
        for i in range(4)
        for j in range(blocks[i])
    )
    assert (net.layer1[0].bn2.weight == 1).all() and (resnet50().layer4[2].bn3.weight == 1).all()
    tv = tv_model("resnet50", zero_init_residual=True).state_dict()
    ours = net.state_dict()
    assert [k for k in tv if k.endswith("weight") and (tv[k] == 0).all()] == [
        k for k in ours if k.endswith("weight") and (ours[k] == 0).all()
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_weights_load_both_ways_with_identical_outputs(arch):
    torch.manual_seed(0)
    tv, ours = tv_model(arch), BACKBONES[arch]("imagenet", 1000)
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), tv.eval()(x))
        torch.manual_seed(1)
        ours, tv = BACKBONES[arch]("imagenet", 1000), tv_model(arch)
        ours.train()(torch.randn(4, 3, 32, 32))  # non-trivial BN statistics, so eval mode uses the buffers
        tv.load_state_dict(ours.state_dict(), strict=True)
        assert torch.equal(ours.eval()(x), tv.eval()(x))


def test_arch_is_read_from_the_weights():
    for arch in ARCHS:
        sd = tv_model(arch).state_dict()
        assert arch_of(sd) == arch
        assert arch_of({f"module.backbone.{k}": v for k, v in sd.items()}) == arch
        assert arch_of(BACKBONES[arch]("cifar").state_dict()) == arch  # no fc, other stem
    assert arch_of(tv_model("resnet34").state_dict()) is None  # BasicBlock, [3, 4, 6, 3]
    assert arch_of(tv_model("resnet101").state_dict()) is None  # Bottleneck, [3, 4, 23, 3]
    # weights of one depth never go into the other
    with pytest.raises(ValueError, match="missing keys|incompatible shapes"):
        load_torchvision_state_dict(resnet18("imagenet"), resnet50("imagenet").state_dict())


def test_cifar_conv1_does_not_fit_torchvision():
    # Documented: same key names, but a 3x3 conv1 cannot go into torchvision's 7x7 conv1.
    with pytest.raises(RuntimeError, match="conv1.weight"):
        tv_resnet18().load_state_dict(resnet18("cifar", 1000).state_dict())


def test_channels_last_and_bf16_autocast():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    for stem in ["cifar", "imagenet"]:
        net = resnet18(stem).to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net(x)
        assert y.shape == (2, 512) and y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    net.eval()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x).float()
        full = net(x)
    assert torch.nn.functional.cosine_similarity(low, full).min() > 0.99


def test_projection_head():
    head = ProjectionHead()
    lin1, bn, relu, lin2 = head.net
    assert lin1.in_features == 512 and lin1.out_features == 2048 and lin1.bias is None
    assert isinstance(bn, nn.BatchNorm1d) and isinstance(relu, nn.ReLU) and lin2.out_features == 128
    assert lin2.bias is not None
    assert head(torch.randn(5, 512)).shape == (5, 128)
    assert ProjectionHead(64, 32, 16)(torch.randn(3, 64)).shape == (3, 16)


def test_projection_head_with_output_bn_is_lightlys_simclr_head():
    """out_bn=True is the head of SimCLR's own code and lightly's SimCLRProjectionHead: loaded with
    lightly's weights, it gives lightly's outputs (training-mode BatchNorm) and the same running stats."""
    heads = pytest.importorskip("lightly.models.modules.heads")
    torch.manual_seed(0)
    theirs = heads.SimCLRProjectionHead(64, 32, 16)
    ours = ProjectionHead(64, 32, 16, out_bn=True)
    mine, other = ours.state_dict(), theirs.state_dict()
    assert [v.shape for v in mine.values()] == [v.shape for v in other.values()]
    ours.load_state_dict(dict(zip(mine, other.values())))
    x = torch.randn(8, 64)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.net[-1].running_mean, theirs.layers[-1].running_mean)
    assert ours.net[3].bias is None and len(ProjectionHead(64, 32, 16).net) == 4


def test_load_strips_prefixes_and_drops_fc():
    torch.manual_seed(0)
    src = resnet18("imagenet", 1000)
    wrapped = {f"module._orig_mod.backbone.{k}": v for k, v in src.state_dict().items()}
    wrapped["module._orig_mod.head.net.0.weight"] = torch.zeros(2048, 512)  # a whole method: ignored
    dst = resnet18("imagenet")  # fc = Identity
    missing, unexpected = load_torchvision_state_dict(dst, wrapped)
    assert missing == [] and unexpected == ["fc.weight", "fc.bias"]
    x = torch.randn(2, 3, 32, 32)
    src.fc = nn.Identity()
    assert torch.equal(dst.eval()(x), src.eval()(x))
    # fc of another size: dropped from the file, the model's own fc keeps its initialisation.
    dst10 = resnet18("imagenet", 10)
    fc_before = dst10.fc.weight.clone()
    missing, unexpected = load_torchvision_state_dict(
        torch.compile(dst10), {f"module.{k}": v for k, v in src.state_dict().items()}
    )
    assert (
        missing == ["fc.weight", "fc.bias"] and unexpected == [] and torch.equal(dst10.fc.weight, fc_before)
    )
    assert torch.equal(dst10.conv1.weight, src.conv1.weight)


def test_load_rejects_incompatible_weights():
    cifar = resnet18("cifar").state_dict()
    dst = resnet18("imagenet")
    before = dst.layer1[0].conv1.weight.clone()
    with pytest.raises(
        ValueError, match=r"conv1.weight: file \(64, 3, 3, 3\) vs model \(64, 3, 7, 7\).*stem"
    ):
        load_torchvision_state_dict(dst, cifar)
    assert torch.equal(dst.layer1[0].conv1.weight, before)  # nothing loaded
    partial = {k: v for k, v in cifar.items() if not k.startswith("layer4.")}
    with pytest.raises(ValueError, match="missing keys"):
        load_torchvision_state_dict(resnet18("cifar"), partial)
    missing, _ = load_torchvision_state_dict(resnet18("cifar"), partial, strict=False)
    assert missing and all(k.startswith("layer4.") for k in missing)
    with pytest.raises(ValueError, match="unexpected keys"):
        load_torchvision_state_dict(resnet18("cifar"), {**cifar, "layer5.0.conv1.weight": torch.zeros(1)})
