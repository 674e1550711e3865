"""Optimisers and the learning-rate schedule used by every method.

- LARS (You et al. 2017) as SimCLR and solo-learn (`clip_lr=True`, `exclude_bias_n_norm=True`)
  use it, SimCLR's choice at large batch. Per weight tensor w with gradient g, weight decay wd,
  trust coefficient eta and the scheduled lr:

      local = eta * ||w|| / (||g|| + wd * ||w|| + eps)      eps = 1e-8
      local = min(local / lr, 1)                            (clip: never a larger step than SGD;
                                                             without it local stays as is, as in SimCLR's
                                                             TF code and lightly, whose eta is 0.001)
      d     = (g + wd * w) * local
      buf   = momentum * buf + d                            (first step: buf = d)
      w    -= lr * buf

  so a layer's effective learning rate is min(lr, local) with clipping, lr * local without. Biases and BatchNorm (1-d parameters,
  the group with lars=False) take plain momentum SGD: no weight decay, no scaling.
- SGD with momentum (Nesterov when the config says so) and AdamW.
- Linear warm-up then cosine decay, stepped once per optimiser step.
"""

import math

import torch

# Base learning rate per 256 images when the config leaves --lr unset. LARS and SGD: solo-learn's
# SimCLR CIFAR learning rate (0.4). AdamW: 1e-3, the usual Adam step size (Kingma & Ba; AdamW's own default);
# SGD-sized rates make Adam's normalised steps diverge.
DEFAULT_LR = {"lars": 0.4, "sgd": 0.4, "adamw": 1e-3}
EPS = 1e-8


def base_lr(optimizer: str, lr: float | None) -> float:
    """The base lr per 256 images: the configured one, else the optimiser's default."""
    return DEFAULT_LR[optimizer] if lr is None else lr


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


def lars_update(
    params,
    grads,
    bufs,
    lr,
    *,
    momentum: float,
    weight_decay: float,
    eta: float,
    trust: bool,
    clip: bool = True,
):
    """The LARS rule of the module docstring on lists of tensors, in place on `params` and `bufs`,
    with multi-tensor kernels (about ten per group, whatever the number of layers). `lr` is a float or a
    0-d tensor on the device (the compiled path: a changing float would recompile). No host sync.
    Buffers start at zero, which makes the first step's buf exactly d."""
    d = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay else grads
    torch._foreach_mul_(bufs, momentum)
    if trust:
        w_norm = torch.stack(torch._foreach_norm(params))
        g_norm = torch.stack(torch._foreach_norm(grads))
        local = eta * w_norm / (g_norm + weight_decay * w_norm + EPS)
        # Unclipped, the step is lr * local: SimCLR's TensorFlow LARS and lightly's (eta 0.001 there).
        local = torch.clamp(local / lr, max=1.0) if clip else local
        # A zero weight (e.g. a zero-initialised layer) would get local = 0 and never move: take the
        # unscaled step there, as solo-learn does.
        local = torch.where(w_norm > 0, local, torch.ones_like(local))
        # buf += local_i * d_i: one multi-tensor kernel where torch has the 0-d fast path for
        # addcmul, one small kernel per weight tensor where it does not.
        torch._foreach_addcmul_(bufs, list(local.unbind(0)), d)
    else:
        torch._foreach_add_(bufs, d)
    if isinstance(lr, torch.Tensor):
        torch._foreach_sub_(params, torch._foreach_mul(bufs, lr))
    else:
        torch._foreach_add_(params, bufs, alpha=-lr)


def lars_update_loop(
    params,
    grads,
    bufs,
    lr,
    *,
    momentum: float,
    weight_decay: float,
    eta: float,
    trust: bool,
    clip: bool = True,
):
    """The same rule one tensor at a time (~10 kernels per tensor): the readable reference of
    `lars_update`, kept for `LARS(foreach=False)` and the benchmark's slow-optimiser row."""
    for p, g, buf in zip(params, grads, bufs):
        d = g + weight_decay * p if weight_decay else g
        if trust:
            w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
            local = eta * w_norm / (g_norm + weight_decay * w_norm + EPS)
            local = torch.clamp(local / lr, max=1.0) if clip else local
            d = d * torch.where(w_norm > 0, local, torch.ones_like(local))
        buf.mul_(momentum).add_(d)
        p.sub_(buf * lr)


class LARS(torch.optim.Optimizer):
    """LARS as the module docstring defines it, for param groups with a `lars` flag (see
    `param_groups`). foreach=True: multi-tensor kernels (`lars_update`); False: a per-tensor loop.
    compiled=True: the update is `torch.compile`d (one fused graph per group), with the lr passed
    as a device tensor so the schedule never recompiles it."""

    def __init__(
        self,
        params,
        lr,
        momentum=0.9,
        weight_decay=0.0,
        eta=0.02,
        clip=True,
        foreach=True,
        compiled=False,
        backend="inductor",
    ):
        super().__init__(
            params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip, lars=True)
        )
        self.foreach, self.compiled = foreach or compiled, compiled
        self._update = lars_update if self.foreach else lars_update_loop
        if compiled:
            self._update = torch.compile(lars_update, fullgraph=True, backend=backend)
        self._lr_tensors = {}

    def _lr(self, i, group, device):
        if not self.compiled:
            return group["lr"]
        t = self._lr_tensors.get(i)
        if t is None:
            t = self._lr_tensors[i] = torch.zeros((), dtype=torch.float32, device=device)
        return t.fill_(group["lr"])  # a kernel with a scalar argument: no host sync

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"])
            self._update(
                params,
                [p.grad for p in params],
                bufs,
                self._lr(i, group, params[0].device),
                momentum=group["momentum"],
                weight_decay=group["weight_decay"],
                eta=group["eta"],
                trust=group["lars"],
                clip=group.get("clip", True),
            )
        return loss


def build_optimizer(
    name: str,
    model,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    *,
    nesterov: bool = False,
    foreach: bool = True,
    compiled: bool = False,
    backend: str = "inductor",
    eta: float = 0.02,
    clip: bool = True,
):
    """The optimiser `name` over `param_groups(model, weight_decay)` at (already batch-scaled) `lr`.
    foreach/compiled (with torch.compile `backend`) select LARS's multi-tensor and compiled update
    paths (same maths); eta and clip are LARS's trust coefficient and clipping."""
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(
            groups,
            lr=lr,
            momentum=momentum,
            eta=eta,
            clip=clip,
            foreach=foreach,
            compiled=compiled,
            backend=backend,
        )
    for g in groups:
        g.pop("lars")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, foreach=foreach)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, foreach=foreach)
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
