"""Contrastive losses as pure functions of tensors.

NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, "A Simple
Framework for Contrastive Learning of Visual Representations", eq. 1 and Algorithm 1):

    sim(u, v) = u.v / (|u| |v|)
    l(i, j)   = -log  exp(sim(z_i, z_j) / T)  /  sum_{k != i} exp(sim(z_i, z_k) / T)
    L         = 1/(2N) sum_k [ l(2k-1, 2k) + l(2k, 2k-1) ]

Every one of the 2N projections is an anchor; its positive is the other view of the same image
and the remaining 2N - 2 projections are its negatives.

Under torchrun, `nt_xent(..., global_batch=True)` is the loss of the global batch: each rank's
2B anchors are scored against all 2*B*world projections (gathered with gradients, see
fastssl/distributed.py), so every image has the negatives of the whole batch, as in the paper's
large-batch training; the ranks' mean is the single-process loss of the concatenated batch.

Three implementations with the same value and gradients:
    nt_xent            plain torch, (2N)^2 logits in memory; what torch.compile sees in the train step
    nt_xent_compiled   torch.compile(nt_xent), built on first call, for use outside a compiled step
    nt_xent_chunked    recomputes the logits in row blocks in backward: O(N*D) saved memory
                       instead of O(N^2), for very large batches
"""

import torch
import torch.nn.functional as F

from .. import distributed


def _check(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"nt_xent needs two (N, D) tensors of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _normalized(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """(N,D), (N,D) -> (2N,D) unit rows, in at least float32: bf16 logits divided by a small
    temperature would lose two significant digits before the softmax."""
    dtype = torch.promote_types(z1.dtype, torch.float32)
    return F.normalize(torch.cat([z1, z2]).to(dtype), dim=1)


def _positives(n: int, device) -> torch.Tensor:
    """(2N,) index of each anchor's other view: rows 0..N-1 are view 1, N..2N-1 view 2."""
    i = torch.arange(n, device=device)
    return torch.cat([i + n, i])


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, global_batch: bool = False
) -> torch.Tensor:
    """NT-Xent loss (SimCLR eq. 1), mean over all 2N anchors.

    z1, z2: (N, D) projections of the two views of the same N images (row i of z1 and row i of
    z2 are a positive pair), any float dtype; the logits and softmax run in float32 (float64
    stays float64). temperature: T > 0. Returns a scalar tensor of the promoted dtype.
    global_batch: in a process group of W > 1 ranks (each with the same N), the negatives are
    the 2NW projections of all ranks and the result is the mean over this rank's 2N anchors;
    without a process group it changes nothing.
    """
    _check(z1, z2, temperature)
    n = z1.shape[0]
    # autocast would run the matmul in bf16 again; the loss is cheap next to the backbone.
    with torch.autocast(z1.device.type, enabled=False):
        z = _normalized(z1, z2)  # (2N, D)
        if global_batch and distributed.world_size() > 1:
            return _nt_xent_global(z, temperature)
        logits = (z @ z.T) / temperature  # (2N, 2N) cosine similarity / T
        # An anchor is never its own negative: -inf drops k == i from the softmax denominator.
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        return F.cross_entropy(logits, _positives(n, z.device))  # logsumexp form: stable


def _nt_xent_global(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """This rank's 2N unit rows z (view 1 then view 2) against the rank-ordered gather of every
    rank's rows: (2N, 2NW) logits; anchor j is row rank*2N + j of the gather, its positive the
    other view of the same image in this rank's block."""
    m = z.shape[0]
    offset = torch.distributed.get_rank() * m
    everyone = distributed.all_gather(z)  # (2NW, D), gradients to all ranks
    logits = (z @ everyone.T) / temperature  # (2N, 2NW)
    rows = torch.arange(m, device=z.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, rows + offset] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, _positives(m // 2, z.device) + offset)


_compiled = None


def nt_xent_compiled(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """`nt_xent` through torch.compile (compiled on the first call, then cached per shape)."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(nt_xent)
    return _compiled(z1, z2, temperature)


class _ChunkedNTXent(torch.autograd.Function):
    """Loss of unit rows z (2N, D), saving only z and the (2N,) row log-sum-exps.

    With s_ij = z_i.z_j / T, P the row softmax over k != i and p(i) the positive,
    L = 1/(2N) sum_i [lse_i - s_i,p(i)] and, since p is its own inverse,
    dL/dz = 1/(2N T) [P z + P^T z - 2 z_p]. P is rebuilt one row block at a time.
    """

    @staticmethod
    def forward(ctx, z, temperature, chunk):
        with torch.autocast(z.device.type, enabled=False):
            return _ChunkedNTXent._forward(ctx, z, temperature, chunk)

    @staticmethod
    def _forward(ctx, z, temperature, chunk):
        m = z.shape[0]
        pos = _positives(m // 2, z.device)
        lse = torch.empty(m, dtype=z.dtype, device=z.device)
        for r in range(0, m, chunk):
            logits = z[r : r + chunk] @ z.T / temperature  # (c, 2N)
            rows = torch.arange(r, min(r + chunk, m), device=z.device)
            logits[rows - r, rows] = float("-inf")
            lse[r : r + chunk] = torch.logsumexp(logits, dim=1)
        positive = (z * z[pos]).sum(1) / temperature  # (2N,)
        ctx.save_for_backward(z, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        return (lse - positive).mean()

    @staticmethod
    def backward(ctx, grad):
        with torch.autocast(grad.device.type, enabled=False):
            return _ChunkedNTXent._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        z, lse = ctx.saved_tensors
        t, chunk, m = ctx.temperature, ctx.chunk, z.shape[0]
        gz = -2 * z[_positives(m // 2, z.device)]
        for r in range(0, m, chunk):
            rows = torch.arange(r, min(r + chunk, m), device=z.device)
            p = torch.exp(z[r : r + chunk] @ z.T / t - lse[r : r + chunk, None])  # (c, 2N)
            p[rows - r, rows] = 0
            gz[r : r + chunk] += p @ z
            gz += p.T @ z[r : r + chunk]
        return gz * (grad / (m * t)), None, None


def nt_xent_chunked(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, chunk: int = 1024
) -> torch.Tensor:
    """Same value and gradients as `nt_xent`, with the (2N, 2N) logits built `chunk` rows at a
    time in forward and again in backward: saved memory O(N*D), peak O(chunk*N). z1, z2: (N, D)."""
    _check(z1, z2, temperature)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    with torch.autocast(z1.device.type, enabled=False):
        return _ChunkedNTXent.apply(_normalized(z1, z2), float(temperature), int(chunk))
