"""Barlow Twins' loss (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", eqs. 1-2), for projections Z, Z' (N, D):

    zhat      = (z - mean) / sqrt(var + 1e-5)         each dimension normalised over the batch
                                                      (BatchNorm1d without affine: biased variance)
    C_ij      = 1/N sum_b zhat_b,i zhat'_b,j          the (D, D) cross-correlation matrix
    loss      = scale * [ sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2 ]

lambda = 0.0051 as in the paper. scale = 0.1 is solo-learn's CIFAR setting (`scale_loss` in its
scripts/pretrain/cifar/barlow.yaml): it multiplies the whole loss, which with LARS's normalised
steps mostly acts on the biases and BatchNorm parameters; scale = 1 is the paper's loss.

Under torchrun (global_batch=True) the mean, the variance and C are those of the global batch:
the per-dimension sums and the (D, D) sum of products are summed over the ranks with gradients
(fastssl/distributed.all_reduce_sum), every rank computes the same loss, and DDP's mean of the
ranks' gradients is the single-process gradient.
"""

import torch

from .. import distributed

LAMBDA = 0.0051  # the paper's weight of the redundancy-reduction term
SCALE = 0.1  # solo-learn's CIFAR scale of the whole loss
BN_EPS = 1e-5  # BatchNorm1d's


def _standardized(z: torch.Tensor, n: torch.Tensor, global_batch: bool) -> torch.Tensor:
    """Each column of z (N, D) minus its mean over the (global) batch, over its biased std."""
    sums = torch.cat([z.sum(0), (z * z).sum(0)])
    if global_batch:
        sums = distributed.all_reduce_sum(sums)
    d = z.shape[1]
    mean = sums[:d] / n
    var = (sums[d:] / n - mean * mean).clamp_min(0)
    return (z - mean) * torch.rsqrt(var + BN_EPS)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, global_batch: bool = False) -> torch.Tensor:
    """C (D, D) of the batch-standardised projections; over the global batch when asked."""
    n = torch.tensor(float(z1.shape[0]), device=z1.device)
    if global_batch:
        n = n * distributed.world_size()
    c = _standardized(z1, n, global_batch).T @ _standardized(z2, n, global_batch)
    if global_batch:
        c = distributed.all_reduce_sum(c)
    return c / n


def barlow_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    lambd: float = LAMBDA,
    scale: float = SCALE,
    global_batch: bool = False,
) -> tuple[torch.Tensor, dict]:
    """(loss, {"on_diagonal", "off_diagonal": the two unweighted sums, detached}).
    z1, z2: (N, D); computed in at least float32."""
    if z1.ndim != 2 or z1.shape != z2.shape or z1.shape[0] < 2:
        raise ValueError(
            f"barlow_loss needs two (N, D) tensors of one shape, N >= 2, got {tuple(z1.shape)}, {tuple(z2.shape)}"
        )
    dtype = torch.promote_types(z1.dtype, torch.float32)
    with torch.autocast(z1.device.type, enabled=False):
        c = cross_correlation(z1.to(dtype), z2.to(dtype), global_batch)
        diag = torch.diagonal(c)
        on = (1 - diag).pow(2).sum()
        off = c.pow(2).sum() - diag.pow(2).sum()
        loss = scale * (on + lambd * off)
    return loss, {"on_diagonal": on.detach(), "off_diagonal": off.detach()}
