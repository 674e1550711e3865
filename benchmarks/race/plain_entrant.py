"""Plain PyTorch: the SimCLR most papers' code is. torchvision transforms v2 on a DataLoader with
worker processes, torchvision's resnet18, a Linear-BN-ReLU-Linear head, NT-Xent written out,
momentum SGD with linear warm-up then cosine (torch's own schedulers), eager, fp32 everywhere.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from .eager import Views, data_loader, torchvision_resnet18, train_eager
from .spec import RaceSpec, images

KNOBS = {}
DIFFERENCES = [
    "optimiser: momentum SGD 0.9, weight decay on every parameter (fastssl: LARS, none on norms and biases)",
    "schedule: torch's LinearLR warm-up then CosineAnnealingLR to 0",
    "views: transforms v2 on uint8 tensors, per sample in worker processes (fastssl gpu: batched float32)",
    "forward: each view through the network separately, BatchNorm per view (fastssl: one 2B batch)",
    "precision: fp32, eager (fastssl on a GPU: bf16 autocast, torch.compile)",
]


def available() -> str | None:
    return None


def nt_xent(z1, z2, temperature):
    """SimCLR's loss as most repositories write it: 2N x 2N cosine logits, self-pairs masked."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def train(spec: RaceSpec, knobs: dict, out: str, device) -> dict:
    if knobs:
        raise ValueError(f"plain takes no knobs, got {knobs}")
    data = images(spec)
    side = data.images.shape[1]
    augment = v2.Compose(
        [
            v2.RandomResizedCrop(side, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(data.mean, data.std),
        ]
    )
    loader = data_loader(Views(data, lambda x: (augment(x), augment(x)), pil=False), spec, device)
    torch.manual_seed(spec.seed)
    backbone = torchvision_resnet18(spec.stem)
    head = nn.Sequential(
        nn.Linear(512, spec.proj_hidden_dim),
        nn.BatchNorm1d(spec.proj_hidden_dim),
        nn.ReLU(),
        nn.Linear(spec.proj_hidden_dim, spec.proj_dim),
    )
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=spec.lr_used, momentum=0.9, weight_decay=spec.weight_decay)
    steps = len(loader)
    warmup = spec.warmup_epochs * steps
    schedule = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1 / max(1, warmup), total_iters=max(1, warmup)
            ),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, spec.epochs * steps - warmup)),
        ],
        milestones=[warmup],
    )
    record = train_eager(
        spec,
        backbone,
        head,
        lambda a, b: nt_xent(a, b, spec.temperature),
        optimizer,
        schedule,
        loader,
        out,
        device,
        amp=None,
    )
    return {**record, "mean": data.mean, "std": data.std, "version": torch.__version__}
