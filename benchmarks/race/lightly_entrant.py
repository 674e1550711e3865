"""lightly (pip install lightly), used as its documentation shows: its SimCLRTransform on a torch
DataLoader with worker processes, torchvision's resnet18, its SimCLRProjectionHead, NTXentLoss,
LARS (weight decay and layer adaptation off for norms and biases, its get_weight_decay_parameters)
and CosineWarmupScheduler, in a plain eager loop; fp16 autocast + grad scaler on a GPU.

Knobs (each swaps one difference with fastssl, for the ablation):
    lars=fastssl    fastssl's LARS (eta 0.02, clipped) instead of lightly's (eta 0.001, unclipped)
    head=fastssl    fastssl's head (no BatchNorm on the output) instead of SimCLRProjectionHead's
    norm=dataset    the dataset's mean/std instead of ImageNet's
    forward=joint   both views through the network as one batch (BatchNorm over 2B), as fastssl
"""

import torch

from fastssl.models import ProjectionHead
from fastssl.optim import build_optimizer
from pipelines import DataError

from .eager import Views, data_loader, torchvision_resnet18, train_eager
from .spec import RaceSpec, images

try:
    import lightly
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.models.utils import get_weight_decay_parameters
    from lightly.transforms import SimCLRTransform
    from lightly.transforms.utils import IMAGENET_NORMALIZE
    from lightly.utils.lars import LARS
    from lightly.utils.scheduler import CosineWarmupScheduler
except ImportError:  # the optional peer: pip install -e ".[peers]"
    lightly = None

KNOBS = {
    "lars": ("lightly", "fastssl"),
    "head": ("lightly", "fastssl"),
    "norm": ("imagenet", "dataset"),
    "forward": ("views", "joint"),
}
# What lightly's stack does differently from fastssl's at the same recipe (printed with the results).
DIFFERENCES = [
    "LARS: trust coefficient 0.001, no clipping (fastssl: 0.02, clipped at the scheduled lr)",
    "schedule: cosine ends at 0.001 x lr (fastssl: 0)",
    "projection head: BatchNorm1d on the 128-d output (fastssl: none)",
    "normalisation: ImageNet mean/std (fastssl: the dataset's)",
    "views: PIL ops with 8-bit rounding (fastssl gpu: float32 torch ops), per-sample in worker processes",
    "forward: each view through the network separately, BatchNorm per view (fastssl: one 2B batch)",
]


def available() -> str | None:
    return None if lightly is not None else 'lightly is not installed (pip install -e ".[peers]")'


def knobs_of(knobs: dict) -> dict:
    """The knobs with their defaults filled in; an unknown knob or value is an error."""
    out = {k: v[0] for k, v in KNOBS.items()}
    for key, value in knobs.items():
        if key not in KNOBS or value not in KNOBS[key]:
            raise DataError(
                f"lightly: unknown knob {key}={value}; knobs: "
                + ", ".join(f"{k}={'|'.join(v)}" for k, v in KNOBS.items())
            )
        out[key] = value
    return out


def normalization(knobs: dict, data) -> tuple:
    if knobs_of(knobs)["norm"] == "dataset":
        return tuple(data.mean), tuple(data.std)
    return tuple(IMAGENET_NORMALIZE["mean"]), tuple(IMAGENET_NORMALIZE["std"])


def train(spec: RaceSpec, knobs: dict, out: str, device) -> dict:
    if lightly is None:
        raise DataError(available())
    k = knobs_of(knobs)
    data = images(spec)
    mean, std = normalization(knobs, data)
    # At 32 px there is no blur in SimCLR's CIFAR recipe; lightly's default would blur half the views.
    transform = SimCLRTransform(
        input_size=data.images.shape[1],
        cj_strength=0.5,
        min_scale=0.08,
        gaussian_blur=0.0 if data.images.shape[1] <= 32 else 0.5,
        normalize={"mean": list(mean), "std": list(std)},
    )
    loader = data_loader(Views(data, transform, pil=True), spec, device)
    torch.manual_seed(spec.seed)
    backbone = torchvision_resnet18(spec.stem)
    if k["head"] == "fastssl":
        head = ProjectionHead(512, spec.proj_hidden_dim, spec.proj_dim)
    else:
        head = SimCLRProjectionHead(512, spec.proj_hidden_dim, spec.proj_dim)
    model = torch.nn.Sequential(backbone, head)
    if k["lars"] == "fastssl":
        optimizer = build_optimizer("lars", model, spec.lr_used, spec.weight_decay, 0.9)
    else:
        params, no_decay = get_weight_decay_parameters([backbone, head])
        optimizer = LARS(
            [{"params": params}, {"params": no_decay, "weight_decay": 0.0}],
            lr=spec.lr_used,
            momentum=0.9,
            weight_decay=spec.weight_decay,
        )
    steps = len(loader)
    schedule = CosineWarmupScheduler(
        optimizer, warmup_epochs=spec.warmup_epochs * steps, max_epochs=spec.epochs * steps
    )
    record = train_eager(
        spec,
        backbone,
        head,
        NTXentLoss(temperature=spec.temperature),
        optimizer,
        schedule,
        loader,
        out,
        device,
        amp="fp16" if device.type == "cuda" else None,
        joint=k["forward"] == "joint",
    )
    return {**record, "mean": mean, "std": std, "version": lightly.__version__}
