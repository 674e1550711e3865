"""BYOL's regression loss (Grill et al. 2020, "Bootstrap Your Own Latent", eq. 2):

    L(p, z) = || p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)

p is the online network's prediction of one view, z the target network's projection of the other
view (no gradient flows into z: the target is an exponential moving average, not trained). The
method sums the two directions, L(p1, z2) + L(p2, z1), the paper's symmetrised loss (eq. 2-3).
Each term is the mean over the batch; under torchrun the ranks' mean is the single-process mean, so
the loss needs no collective.
"""

import torch
import torch.nn.functional as F


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the N rows of 2 - 2 cos(p_i, z_i). p, z: (N, D); computed in at least float32.
    z is used as given: the caller detaches the target."""
    if p.ndim != 2 or p.shape != z.shape:
        raise ValueError(
            f"regression_loss needs two (N, D) tensors of one shape, got {tuple(p.shape)}, {tuple(z.shape)}"
        )
    dtype = torch.promote_types(p.dtype, torch.float32)
    with torch.autocast(p.device.type, enabled=False):
        cos = F.cosine_similarity(p.to(dtype), z.to(dtype), dim=1, eps=1e-8)
        return (2 - 2 * cos).mean()


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The symmetrised BYOL loss: view 1's prediction regresses view 2's target and vice versa.
    z1, z2 are detached here: the target gets no gradient whatever the caller passes."""
    return regression_loss(p1, z2.detach()) + regression_loss(p2, z1.detach())
