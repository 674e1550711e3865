"""Optimisers and the learning-rate schedule used by every method.

- LARS (You et al. 2017), SimCLR's choice at large batch: a per-layer trust ratio
  eta * ||w|| / ||g + wd * w|| rescales each update. Following SimCLR and solo-learn, biases and
  BatchNorm parameters get neither weight decay nor the trust ratio.
- SGD with momentum for small-batch runs.
- Linear warm-up then cosine decay, stepped once per optimiser step.
"""
import math

import torch


def param_groups(model: torch.nn.Module, weight_decay: float):
    """Two groups: weights of conv/linear layers (decayed, LARS-adapted) and 1-d params (not)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True},
        {"params": no_decay, "weight_decay": 0.0, "lars": False},
    ]


class LARS(torch.optim.Optimizer):
    """SGD + momentum whose per-tensor step is scaled by the trust ratio (groups with lars=True).

    Trust ratio = eta * ||w|| / (||g|| + wd * ||w||), clipped to 1 so LARS never takes a larger
    step than plain SGD (solo-learn's `clip_lr`, which keeps early training stable on CIFAR).
    All arithmetic stays on the device: no `.item()`, so no host sync per step.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.02):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            wd, eta, mom, lr = group["weight_decay"], group["eta"], group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd != 0:
                    g = g.add(p, alpha=wd)
                if group["lars"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, torch.ones_like(w_norm))
                    g = g.mul(trust.clamp(max=1.0))
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(mom).add_(g)
                p.add_(state["momentum_buffer"], alpha=-lr)
        return loss


def build_optimizer(name: str, model, lr: float, weight_decay: float, momentum: float = 0.9):
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    if name == "sgd":
        for g in groups:
            g.pop("lars")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    if name == "adamw":
        for g in groups:
            g.pop("lars")
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def warmup_cosine(total_steps: int, warmup_steps: int, final_fraction: float = 0.0):
    """Multiplier of the base lr at step s: linear from ~0 to 1 over warm-up, then cosine to
    `final_fraction`. Returned as a function for `torch.optim.lr_scheduler.LambdaLR`."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f
