"""ResNet-18 and ResNet-50 with torchvision's parameter names, two stems, the SimCLR projection
head and the autoencoder's decoder.

The backbones are torchvision's `resnet18` (BasicBlock, [2, 2, 2, 2]) and `resnet50` (Bottleneck,
[3, 4, 6, 3], stride on the 3x3 conv as torchvision's "v1.5") rewritten in one screen: the same
modules created in the same order with the same initialisation, so every parameter and buffer name
(conv1, bn1, layer1.0.conv1, ..., layer2.0.downsample.0, fc) and its shape match. Weights move both
ways with `load_state_dict(strict=True)`:

    ours = resnet50(stem="imagenet", num_classes=1000)
    ours.load_state_dict(torchvision.models.resnet50().state_dict())        # and the reverse

Stems:
    "imagenet"  conv1 7x7 stride 2 + 3x3/2 max-pool (torchvision; 224px inputs -> 7x7 final map)
    "cifar"     conv1 3x3 stride 1, no max-pool (SimCLR paper, appendix B.9: 32px inputs keep a
                4x4 final map instead of collapsing to 1x1)
A CIFAR-stem state_dict has the same key names, but its conv1.weight is (64, 3, 3, 3), which does
not fit torchvision's (64, 3, 7, 7) conv1: load it into `resnet18(stem="cifar")`, or into
torchvision after replacing its conv1/maxpool the same way.

With num_classes=0 (the default, for self-supervised training) `fc` is nn.Identity and forward
returns the pooled features (B, feature_dim): 512 for ResNet-18, 2048 for ResNet-50; with
num_classes > 0, `fc` is nn.Linear(feature_dim, num_classes). `arch_of(state_dict)` tells which
of the two a torchvision-named state_dict holds.
"""

import torch
from torch import nn

STEMS = ("cifar", "imagenet")


def _downsample(in_channels: int, out_channels: int, stride: int):
    """The 1x1 conv + BN shortcut of a block whose shape changes, or None (identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs + identity (or 1x1 conv + BN `downsample`) shortcut. (B,Cin,H,W) -> (B,C,H/s,W/s)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = _downsample(in_channels, channels, stride)

    @property
    def last_bn(self):  # a property, not a second registration: the key names stay torchvision's
        return self.bn2

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand to 4C, + shortcut. (B,Cin,H,W) -> (B,4C,H/s,W/s)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    @property
    def last_bn(self):
        return self.bn3

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# name -> (block, blocks per stage): what builds each backbone and what tells their weights apart
LAYOUTS = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet50": (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
    """torchvision's ResNet. (B,3,H,W) -> (B,feature_dim) features, or (B,num_classes).

    feature_dim (512 x block.expansion) and layer3_channels (256 x block.expansion) are attributes,
    so heads, decoders and critics size themselves from the backbone they are given."""

    def __init__(
        self,
        layers=(2, 2, 2, 2),
        stem: str = "cifar",
        num_classes: int = 0,
        zero_init_residual: bool = False,
        block=BasicBlock,
    ):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose from {list(STEMS)}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.stem = stem
        self.feature_dim = 512 * block.expansion
        self.layer3_channels = 256 * block.expansion
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()  # no parameters, so the key names are unchanged
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        # Modules are registered in torchvision's order (conv1, bn1, layer1..4, fc): with the same
        # seed, the initialisation below draws the same numbers, so the weights equal torchvision's.
        in_ch = 64
        for i, (channels, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            stage = [block(in_ch, channels, stride)]
            in_ch = channels * block.expansion
            stage += [block(in_ch, channels) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.feature_dim, num_classes) if num_classes > 0 else nn.Identity()

        # torchvision's initialisation (He et al. 2015, fan_out), BN as identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as the identity (Goyal et al. 2017): its last BN is 0
            for m in self.modules():
                if isinstance(m, block):
                    nn.init.zeros_(m.last_bn.weight)

    def forward_layer3(self, x):
        """(B,3,H,W) -> (layer3 map (B,layer3_channels,H/4,W/4) for the CIFAR stem, H/16 for the
        ImageNet stem; pooled features (B,feature_dim) before fc). Deep InfoMax scores the map
        against the vector."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c3 = self.layer3(self.layer2(self.layer1(x)))
        return c3, torch.flatten(self.avgpool(self.layer4(c3)), 1)

    def forward(self, x):
        return self.fc(self.forward_layer3(x)[1])


def resnet18(stem: str = "cifar", num_classes: int = 0, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]). (B,3,H,W) -> (B,512) or (B,num_classes).

    Parameters: 11,689,512 with the ImageNet stem and a 1000-class fc (= torchvision's),
    11,168,832 for the SimCLR backbone (CIFAR stem, no fc)."""
    return ResNet(LAYOUTS["resnet18"][1], stem, num_classes, zero_init_residual, LAYOUTS["resnet18"][0])


def resnet50(stem: str = "cifar", num_classes: int = 0, zero_init_residual: bool = False) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]). (B,3,H,W) -> (B,2048) or (B,num_classes).

    Parameters: 25,557,032 with the ImageNet stem and a 1000-class fc (= torchvision's),
    23,500,352 for the SimCLR backbone (CIFAR stem, no fc)."""
    return ResNet(LAYOUTS["resnet50"][1], stem, num_classes, zero_init_residual, LAYOUTS["resnet50"][0])


BACKBONES = {"resnet18": resnet18, "resnet50": resnet50}


def arch_of(state_dict: dict) -> str | None:
    """The BACKBONES name whose layout a torchvision-named ResNet state_dict has (prefixes such as
    `module.`/`backbone.` stripped first), or None when it is neither."""
    keys = {strip_prefixes(k) for k in state_dict}
    blocks = tuple(
        len({k.split(".")[1] for k in keys if k.startswith(f"layer{i}.") and k.endswith(".conv1.weight")})
        for i in range(1, 5)
    )
    block = Bottleneck if "layer1.0.conv3.weight" in keys else BasicBlock  # only a Bottleneck has conv3
    return next((name for name, layout in LAYOUTS.items() if layout == (block, blocks)), None)


class ProjectionHead(nn.Module):
    """SimCLR projection g(h): Linear -> BatchNorm1d -> ReLU -> Linear [-> BatchNorm1d].
    (B,in_dim) -> (B,out_dim).

    The first Linear has no bias because the BatchNorm right after it would cancel it. out_bn adds
    a BatchNorm1d on the output (and drops the last Linear's bias for the same reason), as SimCLR's
    own code (its final layer: use_bn=True, use_bias=False) and lightly's SimCLRProjectionHead do."""

    def __init__(self, in_dim: int = 512, hidden_dim: int = 2048, out_dim: int = 128, out_bn: bool = False):
        super().__init__()
        layers = [
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=not out_bn),
        ]
        self.net = nn.Sequential(*layers, *([nn.BatchNorm1d(out_dim)] if out_bn else []))

    def forward(self, h):
        return self.net(h)


class UpBlock(nn.Module):
    """Residual upsampling block: nearest interpolation to `size`, then conv-BN-ReLU-conv-BN plus a
    1x1-conv shortcut. Interpolate + conv instead of a transposed conv avoids checkerboard artefacts
    (Odena et al. 2016). (B,Cin,h,w) -> (B,C,*size)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Conv2d(in_channels, channels, 1, bias=False)

    def forward(self, x, size):
        x = nn.functional.interpolate(x, size=size, mode="nearest")
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + self.shortcut(x))


class Decoder(nn.Module):
    """The autoencoder's decoder, mirroring the encoder: pooled features (B,in_dim) -> Linear -> a
    (B,256,4,4) map -> three UpBlocks to H/4, H/2, H (8, 16, 32 for CIFAR) with 128, 64, 64 channels
    -> 3x3 conv to (B,3,H,W). It starts from the pooled vector, so one decoder serves both stems,
    and the output size is taken from the input at call time (any H, W >= 4)."""

    def __init__(self, in_dim: int = 512, base: int = 4):
        super().__init__()
        self.base = base
        self.fc = nn.Linear(in_dim, 256 * base * base)
        self.blocks = nn.ModuleList([UpBlock(256, 128), UpBlock(128, 64), UpBlock(64, 64)])
        self.out = nn.Conv2d(64, 3, 3, 1, 1)

    def forward(self, h, size):
        height, width = size
        x = self.fc(h).view(h.shape[0], 256, self.base, self.base)
        for block, f in zip(self.blocks, (4, 2, 1)):
            x = block(x, (max(height // f, 1), max(width // f, 1)))
        return self.out(x)


# Prefixes seen in saved state_dicts: DDP (`module.`), torch.compile (`_orig_mod.`), and methods
# that hold the network as `self.backbone` (ours, solo-learn, lightly).
WRAPPERS = ("module.", "_orig_mod.")


def strip_prefixes(key: str, prefixes=WRAPPERS + ("backbone.",)) -> str:
    while key.startswith(prefixes):
        key = key.split(".", 1)[1]
    return key


def load_torchvision_state_dict(model: nn.Module, state_dict: dict, strict: bool = True) -> tuple[list, list]:
    """Load a torchvision-named ResNet state_dict into `model`; return (missing, unexpected) keys.

    - `module.`, `_orig_mod.` and `backbone.` prefixes are stripped, in any combination. When the
      dict holds a whole method (`backbone.*` next to `head.*`, ...), only the backbone is used.
    - `fc.*` entries that do not fit the model's fc (fc = Identity, or another number of classes)
      are dropped and listed in `unexpected`; an fc of the model left without weights is listed in
      `missing` (it keeps its initialisation).
    - Any other shape mismatch raises ValueError naming the tensors (e.g. a CIFAR-stem conv1
      (64,3,3,3) into an ImageNet-stem model); with strict=True, so do missing or unexpected keys
      outside fc. Nothing is loaded when ValueError is raised.
    """
    model = getattr(model, "_orig_mod", model)
    bare = {k: strip_prefixes(k, WRAPPERS) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if any(b.startswith("backbone.") for b in bare.values()):
        bare = {k: b for k, b in bare.items() if b.startswith("backbone.")}
    sd = {strip_prefixes(b): state_dict[k] for k, b in bare.items()}

    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    bad_shapes = [k for k in mismatched if not k.startswith("fc.")]
    if bad_shapes:
        detail = ", ".join(
            f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in bad_shapes[:3]
        )
        hint = (
            " (conv1 differs: the weights are for the other stem, see resnet18(stem=...))"
            if "conv1.weight" in bad_shapes
            else ""
        )
        raise ValueError(f"incompatible shapes for {len(bad_shapes)} tensors: {detail}{hint}")
    missing += mismatched  # only fc.* is left in `mismatched` here
    unexpected += mismatched
    if strict:
        bad_missing = [k for k in missing if not k.startswith("fc.")]
        bad_unexpected = [k for k in unexpected if not k.startswith("fc.")]
        if bad_missing or bad_unexpected:
            raise ValueError(
                f"not a matching ResNet state_dict: {len(bad_missing)} missing keys "
                f"{bad_missing[:3]}, {len(bad_unexpected)} unexpected keys {bad_unexpected[:3]}"
            )
    model.load_state_dict({k: v for k, v in sd.items() if k in own and k not in mismatched}, strict=False)
    return missing, unexpected
