"""Linear classifier on frozen, cached features: the library half of the linear protocol.

    from fastssl.eval.probe import linear_protocol
    result = linear_protocol(train_f, train_y, test_f, test_y, num_classes=100)
    result["test"]          # {"top1": ..., "top5": ...}, measured once, at the last epoch

The protocol (`python -m fastssl.linear` wraps it, docs/evaluation.md explains it):
1. A stratified validation split (default 10%) is held out of the training features.
2. Every (learning rate, weight decay) pair of a small grid is trained on the rest. All pairs train
   *at once*, as one (D, G*C) weight matrix fed the same mini-batches, so a 20-point grid costs
   about one run. The pair with the best validation top-1 at the last epoch wins.
3. That pair is retrained on the full training set; the classifier of the last epoch is evaluated
   on the test set. No decision ever looks at the test set, so its accuracy is an unbiased estimate.

Features are standardised with the per-dimension mean/std of the features the classifier trains on.
Why: the scale of a random network's features, a SimCLR backbone's and an ImageNet backbone's
differ by orders of magnitude; after standardising, one learning-rate grid suits all of them.
Standardising is an invertible affine map, so the set of classifiers is the same as on raw features.

The classifier is trained with mini-batch SGD (Nesterov momentum 0.9, L2 weight decay on the
weights, not the bias), cosine learning rate to zero, cross-entropy, no augmentation (the features
are computed once). Weights start at zero: the problem is convex, so the start only affects speed.
"""

import math

import torch
import torch.nn.functional as F

from .knn import topk_accuracy

LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
WD_GRID = (0.0, 1e-5, 1e-4, 1e-3)


def standardize(fit: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6):
    """Per-dimension z-score with statistics of `fit` (N, D), applied to `fit` and every tensor in
    `others` (M, D). Returns (fit_std, [others_std...], (mean (D,), std (D,)))."""
    mean = fit.mean(0)
    std = fit.std(0, unbiased=False).clamp_min(eps)  # a dead (constant) dimension becomes 0, not NaN
    return (fit - mean) / std, [(o - mean) / std for o in others], (mean, std)


@torch.no_grad()
def _top1_per_config(W, b, x, y, chunk=8192):
    """Top-1 accuracy (%) of each of the G classifiers on (x (N, D), y (N,)): tensor (G,), on device."""
    D, G, C = W.shape
    correct = torch.zeros(G, device=x.device)
    for i in range(0, x.shape[0], chunk):
        logits = (x[i : i + chunk] @ W.view(D, G * C)).view(-1, G, C) + b
        correct += (logits.argmax(-1) == y[i : i + chunk, None]).sum(0)
    return 100.0 * correct / max(1, x.shape[0])


def train_linear(
    x,
    y,
    num_classes,
    lrs,
    wds,
    *,
    epochs=100,
    batch_size=512,
    momentum=0.9,
    seed=0,
    evals=None,
    on_epoch=None,
):
    """Train G = len(lrs) softmax classifiers at once on x (N, D) float32, y (N,) int64, same device.

    Classifier g uses learning rate lrs[g] (per mini-batch of `batch_size`, cosine-decayed to zero
    over all steps) and L2 weight decay wds[g] on its weights. `evals` maps a name to (x, y) sets
    scored at the end of every epoch. `on_epoch(record)` receives per epoch
    {"epoch", "lr_scale", "loss": [G], "train_top1": [G], "<name>_top1": [G]}; `train_top1` is the
    running accuracy over the epoch's mini-batches (free: the logits are already there).
    Returns (W (D, G, C), b (G, C), history: list of those records).
    """
    device = x.device
    N, D = x.shape
    G, C = len(lrs), num_classes
    if len(wds) != G:
        raise ValueError("lrs and wds must have the same length")
    lr = torch.tensor(lrs, dtype=torch.float32, device=device)[None, :, None]  # (1, G, 1)
    wd = torch.tensor(wds, dtype=torch.float32, device=device)[None, :, None]
    W = torch.zeros(D, G, C, device=device, requires_grad=True)
    b = torch.zeros(G, C, device=device, requires_grad=True)
    W_buf, b_buf = torch.zeros_like(W), torch.zeros_like(b)
    batch_size = min(batch_size, N)
    steps_per_epoch = N // batch_size  # drop the ragged last batch: every step sees batch_size rows
    total, step = epochs * steps_per_epoch, 0
    g = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        order = torch.randperm(N, generator=g).to(device)
        loss_sum = torch.zeros(G, device=device)
        correct = torch.zeros(G, device=device)
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            logits = (xb @ W.view(D, G * C)).view(-1, G, C) + b  # (B, G, C)
            # Sum over classifiers of each one's mean loss: the gradient w.r.t. W[:, g] is exactly
            # classifier g's own gradient, so the G runs are independent.
            losses = F.cross_entropy(logits.reshape(-1, C), yb.repeat_interleave(G), reduction="none")
            losses = losses.view(-1, G).mean(0)  # (G,)
            W.grad = b.grad = None
            losses.sum().backward()
            scale = 0.5 * (1 + math.cos(math.pi * step / total))
            with torch.no_grad():
                # SGD, Nesterov momentum, coupled L2 (torch.optim.SGD's update), per-classifier lr/wd.
                gW = W.grad + wd * W
                W_buf.mul_(momentum).add_(gW)
                W.sub_(scale * lr * (gW + momentum * W_buf))
                b_buf.mul_(momentum).add_(b.grad)
                b.sub_(scale * lr[0] * (b.grad + momentum * b_buf))
                loss_sum += losses.detach()
                correct += (logits.detach().argmax(-1) == yb[:, None]).sum(0)
            step += 1
        rec = {
            "epoch": epoch,
            "lr_scale": 0.5 * (1 + math.cos(math.pi * step / total)),
            "loss": loss_sum / max(1, steps_per_epoch),
            "train_top1": 100.0 * correct / max(1, steps_per_epoch * batch_size),
        }
        for name, (ex, ey) in (evals or {}).items():
            rec[f"{name}_top1"] = _top1_per_config(W.detach(), b.detach(), ex, ey)
        rec = {
            k: v.tolist() if torch.is_tensor(v) else v for k, v in rec.items()
        }  # host sync: once per epoch
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec)
    return W.detach(), b.detach(), history


@torch.no_grad()
def predict(W, b, x, config=0, chunk=8192):
    """Logits (N, C) of classifier `config` of a trained (W (D, G, C), b (G, C)) on x (N, D)."""
    return torch.cat([x[i : i + chunk] @ W[:, config] + b[config] for i in range(0, x.shape[0], chunk)])


def grid(lrs=LR_GRID, wds=WD_GRID):
    """All (lr, wd) pairs, lr-major: two parallel lists of length len(lrs) * len(wds)."""
    pairs = [(lr, wd) for lr in lrs for wd in wds]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def linear_protocol(
    train_f,
    train_y,
    test_f,
    test_y,
    num_classes,
    *,
    val_idx,
    lrs=LR_GRID,
    wds=WD_GRID,
    epochs=100,
    batch_size=512,
    seed=0,
    log=None,
):
    """The whole protocol on cached features (see the module docstring).

    train_f (N, D), train_y (N,), test_f (M, D), test_y (M,) on one device; `val_idx` (V,) int64
    indices into the training set held out for model selection (see pipelines.data.splits.stratified_split).
    `log(record)` receives every epoch record, tagged {"phase": "grid", "lr": [...], "weight_decay": [...]}
    or {"phase": "final"}. Returns a dict: chosen lr / weight_decay, the grid's validation top-1 per
    pair, validation top-1/top-5 of the chosen pair, test top-1/top-5 (last epoch, measured once),
    and the final classifier (weight (C, D), bias (C,)) with the standardisation it expects.
    """
    device = train_f.device
    val_idx = torch.as_tensor(val_idx, dtype=torch.long, device=device)
    keep = torch.ones(train_f.shape[0], dtype=torch.bool, device=device)
    keep[val_idx] = False
    if val_idx.numel() == 0 or not keep.any():
        raise ValueError("the validation split must be a non-empty proper subset of the training set")
    lr_list, wd_list = grid(lrs, wds)

    # 1-2. Selection: fit on train-minus-val (statistics included), score on val.
    fit_x, (val_x,), _ = standardize(train_f[keep], train_f[val_idx])
    fit_y, val_y = train_y[keep], train_y[val_idx]

    def log_grid(rec):
        if log is not None:
            log({"phase": "grid", "lr": lr_list, "weight_decay": wd_list, **rec})

    W, b, hist = train_linear(
        fit_x,
        fit_y,
        num_classes,
        lr_list,
        wd_list,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        evals={"val": (val_x, val_y)},
        on_epoch=log_grid,
    )
    val_top1 = hist[-1]["val_top1"]
    best = max(range(len(val_top1)), key=lambda i: (val_top1[i], -i))  # ties: the earlier (smaller lr, wd)
    val_acc = topk_accuracy(predict(W, b, val_x, best), val_y)

    # 3. Final: the chosen pair on the full training set, test scored once at the end.
    full_x, (test_x,), (mean, std) = standardize(train_f, test_f)

    def log_final(rec):
        if log is not None:
            log({"phase": "final", **{k: (v[0] if isinstance(v, list) else v) for k, v in rec.items()}})

    # The test curve is logged for the plots only; nothing is chosen from it.
    W, b, hist_final = train_linear(
        full_x,
        train_y,
        num_classes,
        [lr_list[best]],
        [wd_list[best]],
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        evals={"test": (test_x, test_y)},
        on_epoch=log_final,
    )
    test_acc = topk_accuracy(predict(W, b, test_x), test_y)
    return {
        "lr": lr_list[best],
        "weight_decay": wd_list[best],
        "grid": [
            {"lr": lr, "weight_decay": wd, "val_top1": acc} for lr, wd, acc in zip(lr_list, wd_list, val_top1)
        ],
        "val": val_acc,
        "test": test_acc,
        "final_train_top1": hist_final[-1]["train_top1"][0],
        "classifier": {
            "weight": W[:, 0].T.cpu(),
            "bias": b[0].cpu(),
            "feature_mean": mean.cpu(),
            "feature_std": std.cpu(),
        },
    }
