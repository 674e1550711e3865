"""SimCLR (Chen et al. 2020): two augmented views -> backbone -> projection head -> NT-Xent."""

from torch import nn

from ..losses import nt_xent
from ..models import BACKBONES, ProjectionHead


class SimCLR(nn.Module):
    recipe = "simclr"

    def __init__(self, cfg, num_classes: int = 0):
        super().__init__()
        self.backbone = BACKBONES[cfg.backbone](stem=cfg.stem)
        self.head = ProjectionHead(
            self.backbone.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim, out_bn=cfg.proj_out_bn
        )
        self.temperature = cfg.temperature

    def forward(self, batch, features: bool = False):
        # Both views go through the network as one batch: one kernel launch per layer instead of
        # two, and BatchNorm sees statistics of all 2B images, as in the paper's global BN.
        # `batch.both` is the pipeline's own (2B, ...) tensor when it made one: no copy per step.
        y = self.backbone(batch.both)
        z = self.head(y)
        z1, z2 = z.float().chunk(2)
        # Under torchrun the negatives are the whole global batch's (gathered with gradients).
        loss = nt_xent(z1, z2, self.temperature, global_batch=True)
        logs = {"loss": loss.detach()}
        return (loss, logs, y) if features else (loss, logs)
