"""Deep InfoMax (Hjelm et al. 2019, ICLR): maximise the mutual information between an image's
global feature vector and every position of an intermediate feature map of the same image.

    view (crop+flip) -> backbone: layer3 map c (B,C3,h,w) and pooled features y (B,D); C3, D =
                        256, 512 for ResNet-18 and 1024, 2048 for ResNet-50 (read from the backbone)
    local MI   (beta)   T(y_i, c_{j,p}) = phi_g(y_i) . phi_l(c_{j,p}) / sqrt(512) at every position p of layer3
                        (8x8 for the CIFAR stem, 2x2 for the ImageNet stem on 32px); other images of
                        the batch are the negatives; estimator --dim-estimator jsd | infonce
    global MI  (alpha)  the same with the whole layer3 map embedded into one vector (P = 1)
    prior      (gamma)  sigmoid(Linear(y)) in [0,1]^64 matched to a uniform prior adversarially

    loss = -(alpha I_global + beta I_local) + gamma L_D(v, reverse_gradient(sigmoid(Linear(y))))

The prior-matching game is played in the one backward of the training loop: the discriminator D
minimises its cross-entropy L_D, and the gradient reversal makes the encoder *maximise* it (its
outputs become indistinguishable from prior samples), which is the paper's min_psi max_phi. The
discriminator's effective learning rate is thus gamma x the optimiser's. Defaults are the paper's
DIM(L): alpha = 0, beta = 1, gamma = 0.1. Sub-networks whose weight is 0 are not built, so every
parameter gets a gradient (DistributedDataParallel requires it). Under torchrun the negatives are
the images of the local batch.

Two choices differ from published DIM (the paper, and the authors' rdevon/DIM prior_matching.py):
- the prior is matched on sigmoid(Linear(y)), a 64-d code computed from the evaluated features y,
  not on the representation itself (the paper's 64-d Y; the authors' code applies the sigmoid to Y).
- the encoder's prior term is eq. 7's min-max form (maximise L_D, i.e. minimise E[log(1 - D(code))]),
  not the authors' non-saturating -E[log D(code)], whose gradient does not vanish when D wins; the
  min-max form is what one backward through reverse_gradient gives.
"""

import math

import torch
from torch import nn

from ..losses import DIM_ESTIMATORS, local_scores, prior_matching_loss, reverse_gradient
from ..models import BACKBONES

EMBED = 512  # width of the critic's embeddings (the paper's CIFAR local critic: 512 units)
# Scores are dot products / sqrt(EMBED), as in scaled dot-product attention: at initialisation the
# raw dot products of ResNet features have a std of 9-14, which saturates infoNCE's softmax from the
# first step; scaled they start near 0.5. The critic can learn any scale back.
SCORE_SCALE = 1 / math.sqrt(EMBED)
PRIOR_DIM = 64  # size of the prior-matched code (the paper's Y)


class ConvEmbed(nn.Module):
    """1x1-conv MLP with a linear shortcut (the paper's encode-and-dot-product critic). (B,C,h,w) -> (B,E,h*w)."""

    def __init__(self, in_channels: int, dim: int = EMBED):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, dim, 1), nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 1)
        )
        self.shortcut = nn.Conv2d(in_channels, dim, 1)

    def forward(self, c):
        return (self.net(c) + self.shortcut(c)).flatten(2)


class LinearEmbed(nn.Module):
    """The same for vectors. (B,D) -> (B,E)."""

    def __init__(self, in_dim: int, dim: int = EMBED):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.shortcut = nn.Linear(in_dim, dim)

    def forward(self, y):
        return self.net(y) + self.shortcut(y)


class MapEmbed(nn.Module):
    """The whole layer3 map -> one vector for the global-MI critic; pooled to 4x4 first so that it
    fits any stem and input size. (B,C,h,w) -> (B,E,1)."""

    def __init__(self, in_channels: int, dim: int = EMBED):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 128, 3, 1, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(4), nn.Flatten()
        )
        self.mlp = LinearEmbed(128 * 16, dim)

    def forward(self, c):
        return self.mlp(self.conv(c)).unsqueeze(2)


class DeepInfoMax(nn.Module):
    recipe = "supervised"  # crop + flip; the paper describes augmentation (crops, flips) only for STL-10

    def __init__(self, cfg, num_classes: int = 0):
        super().__init__()
        self.backbone = BACKBONES[cfg.backbone](stem=cfg.stem)
        self.estimator = DIM_ESTIMATORS[cfg.dim_estimator]
        self.alpha, self.beta, self.gamma = cfg.dim_alpha, cfg.dim_beta, cfg.dim_gamma
        feat, layer3 = self.backbone.feature_dim, self.backbone.layer3_channels
        if self.beta > 0:
            self.local_c, self.local_y = ConvEmbed(layer3), LinearEmbed(feat)
        if self.alpha > 0:
            self.global_c, self.global_y = MapEmbed(layer3), LinearEmbed(feat)
        if self.gamma > 0:
            self.prior_code = nn.Linear(feat, PRIOR_DIM)
            self.discriminator = nn.Sequential(
                nn.Linear(PRIOR_DIM, 1000),
                nn.ReLU(inplace=True),
                nn.Linear(1000, 200),
                nn.ReLU(inplace=True),
                nn.Linear(200, 1),
            )

    def forward(self, batch, features: bool = False):
        c, y = self.backbone.forward_layer3(batch.view1)
        loss = torch.zeros((), device=y.device)
        logs = {}
        if self.beta > 0:
            mi = self.estimator(SCORE_SCALE * local_scores(self.local_y(y), self.local_c(c)))
            loss = loss - self.beta * mi
            logs["mi_local"] = mi.detach()
        if self.alpha > 0:
            mi = self.estimator(SCORE_SCALE * local_scores(self.global_y(y), self.global_c(c)))
            loss = loss - self.alpha * mi
            logs["mi_global"] = mi.detach()
        if self.gamma > 0:
            code = torch.sigmoid(self.prior_code(y))
            prior = torch.rand_like(code)  # v ~ U[0, 1]^64
            d_loss = prior_matching_loss(
                self.discriminator(prior).squeeze(1), self.discriminator(reverse_gradient(code)).squeeze(1)
            )
            loss = loss + self.gamma * d_loss
            logs["prior_d_loss"] = d_loss.detach()
        logs = {"loss": loss.detach(), **logs}
        return (loss, logs, y) if features else (loss, logs)
