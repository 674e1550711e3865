"""VICReg's loss (Bardes, Ponce & LeCun 2022, "VICReg: Variance-Invariance-Covariance
Regularization for Self-Supervised Learning", eqs. 1-6), for projections Z, Z' (N, D):

    s(Z, Z')  = 1/N sum_i ||z_i - z'_i||^2 / D      invariance: the mean squared error (eq. 5 / D,
                                                    as the authors' code F.mse_loss computes it)
    v(Z)      = 1/D sum_j max(0, gamma - sqrt(Var(z^j) + eps))   gamma = 1, eps = 1e-4 (eq. 1)
    c(Z)      = 1/D sum_{i != j} C(Z)_ij^2,  C(Z) = 1/(N-1) sum_i (z_i - zbar)(z_i - zbar)^T  (eqs. 3-4)
    loss      = lambda s + mu (v(Z) + v(Z')) / 2 + nu (c(Z) + c(Z'))     lambda = mu = 25, nu = 1

The variance term is halved as in the authors' code (facebookresearch/vicreg, main_vicreg.py),
solo-learn and lightly; eq. 6 of the paper writes mu [v(Z) + v(Z')] without the 1/2.

Under torchrun (global_batch=True) the variance and covariance are those of the global batch: the
projections of every rank are gathered with gradients (fastssl/distributed.py), every rank
computes the same two terms, and DDP's mean of the ranks' gradients is the single-process
gradient. The invariance term is a per-image mean, so the ranks' mean of local means is global.
"""

import torch
import torch.nn.functional as F

from .. import distributed

WEIGHTS = {"invariance": 25.0, "variance": 25.0, "covariance": 1.0}  # lambda, mu, nu (the paper's)


def variance(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """v(Z): the mean hinge on each dimension's standard deviation (unbiased variance). z: (N, D)."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


def covariance(z: torch.Tensor) -> torch.Tensor:
    """c(Z): the squared off-diagonal entries of the (D, D) covariance matrix, summed, over D."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = (z.T @ z) / (n - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / d


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    invariance_weight: float = WEIGHTS["invariance"],
    variance_weight: float = WEIGHTS["variance"],
    covariance_weight: float = WEIGHTS["covariance"],
    eps: float = 1e-4,
    global_batch: bool = False,
) -> tuple[torch.Tensor, dict]:
    """(loss, {"invariance", "variance", "covariance": the unweighted terms, detached}).
    z1, z2: (N, D) projections of the two views, N >= 2; computed in at least float32."""
    if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise ValueError(
            f"vicreg_loss needs two (N, D) tensors of one shape, N >= 2, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    dtype = torch.promote_types(z1.dtype, torch.float32)
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = z1.to(dtype), z2.to(dtype)
        inv = F.mse_loss(z1, z2)
        if global_batch:  # no-op in one process
            z1, z2 = distributed.all_gather(z1), distributed.all_gather(z2)
        var = 0.5 * (variance(z1, eps=eps) + variance(z2, eps=eps))
        cov = covariance(z1) + covariance(z2)
        loss = invariance_weight * inv + variance_weight * var + covariance_weight * cov
    return loss, {"invariance": inv.detach(), "variance": var.detach(), "covariance": cov.detach()}
