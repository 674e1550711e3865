"""Online linear probe: a linear classifier trained beside pretraining on the detached pooled
backbone features, scored on the kNN monitor's validation images (as solo-learn reports it).

    python -m fastssl.pretrain --dataset cifar10-sample --epochs 4 --knn-every 2 --out runs/probe
    # metrics.jsonl epoch summaries gain val_online_top1 / val_online_top5; --no-online-probe: none

It is not the linear evaluation protocol (fastssl/eval/probe.py trains on frozen features after
pretraining); it is a cheap running signal. Its features come from the method's own forward
(`forward(batch, features=True)`), detached, so the backbone gets no gradient from it and no second
backbone pass is made. Its loss is added to the method's: d(total)/d(loss) = 1 exactly, so the
backbone's gradients are bit-identical with the probe on or off.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .eval.features import extract

# Its own optimiser, not the method's (LARS, weight decay, warm-up schedule): Adam at a constant rate,
# whose step size does not depend on the features' scale, which changes as the backbone trains (SGD at
# 0.1 diverged on the unnormalised pooled features). The layer starts at zero: that draws no random
# numbers, so the run's RNG stream (initialisation, augmentation) is the same with the probe on or off.
LR = 1e-3


class Probed(nn.Module):
    """The training step's model with the probe: `method`'s loss plus the probe's cross-entropy on
    the labelled images (label -1: excluded); logs gain `online_loss`."""

    def __init__(self, method: nn.Module, num_classes: int):
        super().__init__()
        self.method = method
        self.probe = nn.Linear(method.backbone.feature_dim, num_classes)
        nn.init.zeros_(self.probe.weight)
        nn.init.zeros_(self.probe.bias)

    def forward(self, batch):
        loss, logs, features = self.method(batch, features=True)
        labels = batch.labels.repeat(features.shape[0] // batch.labels.shape[0])  # two views: both
        logits = self.probe(features.detach()).float()
        # A sum over the labelled images / their count (at least 1): a batch without labels gives 0,
        # where a mean over none would give NaN.
        ce = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
        online = ce / (labels >= 0).sum().clamp(min=1)
        return loss + online, {**logs, "online_loss": online.detach()}


def build(method: nn.Module, num_classes: int):
    """(Probed model, its optimiser)."""
    model = Probed(method, num_classes).to(next(method.parameters()).device)
    return model, torch.optim.Adam(model.probe.parameters(), lr=LR)


@torch.no_grad()
def evaluate(backbone, probe: nn.Linear, data, device, precision="fp32") -> dict:
    """Top-1/top-5 (%) of `probe` on `data`'s labelled images, through the evaluation features."""
    was_training = probe.training
    features, labels = extract(backbone, data, device, precision=precision)
    labelled = labels >= 0
    top = probe.eval()(features[labelled].to(probe.weight.dtype)).topk(min(5, probe.out_features), 1).indices
    probe.train(was_training)
    hit = top == labels[labelled][:, None]
    return {f"top{k}": 100.0 * hit[:, :k].any(1).float().mean().item() for k in (1, 5)}  # host sync: once
