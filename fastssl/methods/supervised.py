"""Supervised training from scratch: the same backbone plus a linear classifier, cross-entropy on
one crop+flip view. It is the from-scratch baseline for the evaluation protocol."""

import torch.nn.functional as F
from torch import nn

from ..models import BACKBONES


class Supervised(nn.Module):
    recipe = "supervised"

    def __init__(self, cfg, num_classes: int):
        super().__init__()
        if num_classes <= 0:
            raise ValueError("supervised training needs a labelled dataset")
        self.backbone = BACKBONES[cfg.backbone](stem=cfg.stem)
        self.classifier = nn.Linear(self.backbone.feature_dim, num_classes)

    def forward(self, batch, features: bool = False):
        y = self.backbone(batch.view1)
        logits = self.classifier(y).float()
        # Unlabelled images (label -1, cifar10+cifar100) contribute nothing.
        loss = F.cross_entropy(logits, batch.labels, ignore_index=-1)
        labelled = batch.labels >= 0
        acc = ((logits.argmax(1) == batch.labels) & labelled).float().sum() / labelled.sum().clamp(min=1)
        logs = {"loss": loss.detach(), "acc": acc.detach()}
        return (loss, logs, y) if features else (loss, logs)
