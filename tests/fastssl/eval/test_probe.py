"""The linear probe: separable features are learnt perfectly, the batched grid equals independent
torch.optim.SGD runs, validation and test rows never reach the training set, top-k is exact."""

import math

import torch

from fastssl.eval.knn import topk_accuracy
from fastssl.eval.probe import linear_protocol, predict, standardize, train_linear


def clusters(n, d, c, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * 4
    y = torch.arange(n) % c
    return centers[y] + spread * torch.randn(n, d, generator=g), y


def test_separable_features_reach_100_percent():
    x, y = clusters(600, 32, 6, seed=0)
    x = x * 50 + 7  # a scale and offset no fixed learning rate would suit: standardising handles it
    val_idx = torch.arange(0, 400, 10)  # 40 rows, every class
    result = linear_protocol(
        x[:400],
        y[:400],
        x[400:],
        y[400:],
        6,
        val_idx=val_idx,
        lrs=(0.01, 0.1),
        wds=(0.0, 1e-4),
        epochs=10,
        batch_size=64,
    )
    assert result["test"]["top1"] == 100.0 and result["val"]["top1"] == 100.0
    assert len(result["grid"]) == 4 and {g["lr"] for g in result["grid"]} == {0.01, 0.1}


def test_batched_grid_equals_independent_sgd_runs():
    x, y = clusters(96, 10, 3, seed=1, spread=3.0)
    lrs, wds, epochs, bs = [0.05, 0.5, 0.2], [0.0, 1e-2, 1e-3], 3, 16
    W, b, _ = train_linear(x, y, 3, lrs, wds, epochs=epochs, batch_size=bs, seed=5)
    steps = epochs * (96 // bs)
    for g_, (lr, wd) in enumerate(zip(lrs, wds)):
        lin = torch.nn.Linear(10, 3)
        torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
        opt = torch.optim.SGD(
            [{"params": [lin.weight], "weight_decay": wd}, {"params": [lin.bias], "weight_decay": 0}],
            lr=lr,
            momentum=0.9,
            nesterov=True,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        gen = torch.Generator().manual_seed(5)
        for _ in range(epochs):
            order = torch.randperm(96, generator=gen)
            for i in range(96 // bs):
                idx = order[i * bs : (i + 1) * bs]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(lin(x[idx]), y[idx]).backward()
                opt.step()
                sched.step()
        assert torch.allclose(W[:, g_].T, lin.weight.detach(), atol=1e-5), g_
        assert torch.allclose(b[g_], lin.bias.detach(), atol=1e-5), g_


def test_validation_and_test_rows_are_never_trained_on():
    # Random labels on random high-dimensional points: a linear classifier memorises the rows it is
    # trained on (train ~100%) and is at chance on rows it never saw. So validation and test accuracy
    # far above chance would mean they leaked into training.
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 512, generator=g), torch.randint(0, 4, (300,), generator=g)
    seen = []
    result = linear_protocol(
        x[:200],
        y[:200],
        x[200:],
        y[200:],
        4,
        val_idx=torch.arange(150, 200),
        lrs=(0.3,),
        wds=(0.0,),
        epochs=60,
        batch_size=50,
        log=seen.append,
    )
    grid_train = [r["train_top1"][0] for r in seen if r["phase"] == "grid"]
    assert grid_train[-1] > 95 and result["final_train_top1"] > 95
    assert result["val"]["top1"] < 50 and result["test"]["top1"] < 50  # chance is 25%
    assert [r["phase"] for r in seen] == ["grid"] * 60 + ["final"] * 60


def test_topk_on_hand_made_logits():
    # With W = identity and b = 0 the classifier's logits are the inputs themselves.
    logits = torch.tensor(
        [
            [0.0, 5.0, 1.0, 2.0, 3.0, 4.0, -1.0],  # label 1: top-1
            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 4: 5th highest -> top-5 only
            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # label 5: 6th highest -> miss
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0],
        ]
    )  # label 6: top-1
    W, b = torch.eye(7)[:, None, :], torch.zeros(1, 7)
    acc = topk_accuracy(predict(W, b, logits), torch.tensor([1, 4, 5, 6]))
    assert acc == {"top1": 50.0, "top5": 75.0}


def test_standardize_uses_fit_statistics_only():
    fit, other = torch.tensor([[1.0, 10.0], [3.0, 10.0]]), torch.tensor([[2.0, 11.0]])
    f, (o,), (mean, std) = standardize(fit, other)
    assert torch.equal(mean, torch.tensor([2.0, 10.0])) and torch.allclose(f[:, 0], torch.tensor([-1.0, 1.0]))
    assert torch.allclose(o, torch.tensor([[0.0, 1e6]]), rtol=1e-3)  # constant dim: std clamped, no NaN
