"""A trained backbone as a plain torchvision model, for use outside fastssl: `fastssl.load_backbone`.

    import fastssl
    model = fastssl.load_backbone("runs/simclr")                  # the run's backbone.pt
    model = fastssl.load_backbone("runs/simclr/backbone.safetensors")
    features = model(images)  # (B, 3, H, W) normalised with backbone.json's mean/std -> (B, 512)

The files it reads are those fastssl.checkpoint.backbone_state_dict reads (a run directory, last.pt /
best.pt, backbone.pt, backbone.safetensors, a torchvision ResNet-18/50 state_dict); the architecture
and stem come from the weights.
"""

from torch import nn

from pipelines import DataError

from . import checkpoint

_IMPORT_ERROR = None
try:
    import torchvision
except (ImportError, RuntimeError) as e:  # absent, or built for another torch
    torchvision, _IMPORT_ERROR = None, e


def torchvision_resnet(arch: str, stem: str) -> nn.Module:
    """torchvision's `resnet18`/`resnet50`, untrained, without its classifier (fc = Identity: it
    returns the pooled features); the CIFAR stem swaps conv1 for a 3x3 stride-1 conv and drops the
    max-pool, as fastssl.models does, so fastssl's key names and shapes fit it as they are."""
    if torchvision is None:
        raise DataError(
            f"a torchvision model needs torchvision: pip install -e .[torchvision] ({_IMPORT_ERROR})"
        )
    model = getattr(torchvision.models, arch)()
    model.fc = nn.Identity()
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model


def load_backbone(path: str) -> nn.Module:
    """A torchvision ResNet-18/50 in eval mode holding the backbone weights at `path` (see the module
    docstring). pipelines.DataError, one line, when the file is missing, unreadable or not a
    ResNet-18/50 backbone."""
    sd, info = checkpoint.backbone_state_dict(path)
    model = torchvision_resnet(info["arch"], info["stem"])
    checkpoint.load_into(model, sd, info["source"])
    return model.eval()
