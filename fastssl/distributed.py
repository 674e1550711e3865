"""Collectives with gradients, for losses and normalisation over the global batch under torchrun.

Each rank's loss covers its own anchors (or its own images) but sees every rank's tensors; DDP
then averages the ranks' gradients. For that average to equal the single-process gradient of the
mean loss over the concatenated batch, the backward of a collective must *sum* over ranks the
gradient of every rank's loss with respect to this rank's input:

    grad_r = sum_r' dL_r' / dx_r        (DDP: 1/W sum_r grad_r . dx_r/dtheta = d mean_r L_r / dtheta)

`all_gather` (rank-ordered concatenation) and `all_reduce_sum` do exactly that; both are no-ops
in a single process. `SyncBatchNorm` normalises with statistics of the global batch through them:
unlike torch.nn.SyncBatchNorm it runs on CPU (gloo) as well as CUDA, and in eval mode it is plain
BatchNorm on the running statistics, so feature extraction needs no other process.
"""

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's rows
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each rank -> (world * n, ...), rank 0's rows first; gradients flow back to every
    rank's rows. Every rank must pass the same shape."""
    return _AllGather.apply(x) if world_size() > 1 else x


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over the ranks, differentiable."""
    return _AllReduceSum.apply(x) if world_size() > 1 else x


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch: in training each channel's mean and (biased) variance are
    those of all ranks' inputs together, from one all_reduce of [sum, sum of squares, count];
    running statistics are updated with the unbiased variance, as nn.BatchNorm does."""

    def _check_input_dim(self, x):
        if x.ndim < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.ndim}-D")

    def forward(self, x):
        if not self.training or world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.ndim)]
        c = x.shape[1]
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 sums of squares would cancel
        local = torch.cat([xf.sum(dims), (xf * xf).sum(dims), xf.new_full((1,), x.numel() // c)])
        stats = all_reduce_sum(local)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).to(self.running_var.dtype), m)
        shape = (1, c) + (1,) * (x.ndim - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm layer replaced, in place, by a SyncBatchNorm holding the
    same parameters and running statistics (state_dict keys unchanged)."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncBatchNorm):
            sync = SyncBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            ref = next(iter(child.state_dict().values()), None)
            if ref is not None:
                sync.to(
                    device=ref.device, dtype=child.weight.dtype if child.affine else child.running_mean.dtype
                )
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child)
    return module
