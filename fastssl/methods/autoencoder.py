"""Autoencoder: one crop+flip view -> backbone -> pooled features (512-d for ResNet-18, 2048-d for
ResNet-50) -> Decoder -> the view again.

Loss: mean squared error between the reconstruction and the normalised input view. With
`--ae-noise S` > 0 it is a denoising autoencoder (Vincent et al. 2008): the encoder sees the view
plus Gaussian noise of standard deviation S (in normalised units, i.e. per-channel std of the
data), the target stays the clean view, so the features must capture image structure rather than
copy pixels. The evaluated feature is the same pooled vector as for SimCLR.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..models import BACKBONES, Decoder


class Autoencoder(nn.Module):
    recipe = "supervised"  # crop + flip: the reconstruction target is the view, so no colour jitter

    def __init__(self, cfg, num_classes: int = 0):
        super().__init__()
        self.backbone = BACKBONES[cfg.backbone](stem=cfg.stem)
        self.decoder = Decoder(self.backbone.feature_dim)
        self.noise = cfg.ae_noise

    def forward(self, batch, features: bool = False):
        x = batch.view1
        noisy = x + self.noise * torch.randn_like(x) if self.noise > 0 and self.training else x
        y = self.backbone(noisy)
        recon = self.decoder(y, x.shape[-2:])
        loss = F.mse_loss(recon.float(), x.float())
        logs = {"loss": loss.detach()}
        return (loss, logs, y) if features else (loss, logs)
