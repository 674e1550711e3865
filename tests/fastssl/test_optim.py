"""LARS against its formula written out in float64 NumPy; fast (multi-tensor, compiled) paths
against the per-tensor loop; the schedule's shape; parameter groups; per-optimiser defaults."""

import copy
import math

import numpy as np
import pytest
import torch

from fastssl.optim import DEFAULT_LR, LARS, base_lr, build_optimizer, param_groups, warmup_cosine
from fastssl.pretrain import PretrainConfig

ETA, WD, LR, MOM, EPS = 0.02, 1e-3, 0.1, 0.9, 1e-8


def test_param_groups_exclude_bias_and_bn():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(m, 1e-4)
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[2].weight)}
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0 and not no_decay["lars"]


def reference_lars(w, grads, lr, wd, eta, momentum):
    """The rule as SimCLR / solo-learn state it, one weight tensor, NumPy float64:
    local = eta|w| / (|g| + wd|w| + eps); local = min(local / lr, 1); d = (g + wd w) local;
    buf = m buf + d (first step buf = d); w -= lr buf. Returns the weights after each step and
    the unclipped ratio eta|w|/|g| seen at each step."""
    w, buf, out, ratios = w.copy(), None, [], []
    for g in grads:
        wn, gn = np.sqrt((w * w).sum()), np.sqrt((g * g).sum())
        ratios.append(eta * wn / gn)
        local = min(eta * wn / (gn + wd * wn + EPS) / lr, 1.0)
        d = (g + wd * w) * local
        buf = d if buf is None else momentum * buf + d
        w = w - lr * buf
        out.append(w.copy())
    return out, ratios


def three_regimes(steps=4):
    """Three weight tensors (norm 10) whose gradients put eta|w|/|g| at ~10 (>= 1), ~0.5 (between
    lr and 1) and ~0.01 (below lr), and a 1-d parameter."""
    rng = np.random.default_rng(0)
    shapes, grad_norms = [(6, 5), (4, 3, 2), (7, 3)], [0.02, 0.4, 20.0]
    ws = []
    for s in shapes:
        w = rng.standard_normal(s)
        ws.append(10 * w / np.sqrt((w * w).sum()))
    grads = []
    for s, gn in zip(shapes, grad_norms):
        seq = [rng.standard_normal(s) for _ in range(steps)]
        grads.append([gn * g / np.sqrt((g * g).sum()) for g in seq])
    bias = rng.standard_normal(5)
    bias_grads = [rng.standard_normal(5) for _ in range(steps)]
    return ws, grads, bias, bias_grads


@pytest.mark.parametrize("path", ["foreach", "loop"])
def test_lars_matches_formula_in_three_regimes(path):
    ws, grads, bias, bias_grads = three_regimes()
    params = [torch.nn.Parameter(torch.tensor(w)) for w in ws]
    b = torch.nn.Parameter(torch.tensor(bias))
    opt = LARS(
        [
            {"params": params, "weight_decay": WD, "lars": True},
            {"params": [b], "weight_decay": 0.0, "lars": False},
        ],
        lr=LR,
        momentum=MOM,
        eta=ETA,
        foreach=path == "foreach",
    )
    refs = [reference_lars(w, g, LR, WD, ETA, MOM) for w, g in zip(ws, grads)]
    first = [r[1][0] for r in refs]
    assert first[0] >= 1 and LR < first[1] < 1 and first[2] < LR, first  # the three regimes are exercised
    buf, bias_ref = None, bias.copy()
    for step in range(len(bias_grads)):
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g[step])
        b.grad = torch.tensor(bias_grads[step])
        opt.step()
        for p, (ref, _) in zip(params, refs):
            np.testing.assert_allclose(p.detach().numpy(), ref[step], rtol=0, atol=1e-12)
        buf = bias_grads[step] if buf is None else MOM * buf + bias_grads[step]  # plain momentum SGD
        bias_ref = bias_ref - LR * buf
        np.testing.assert_allclose(b.detach().numpy(), bias_ref, rtol=0, atol=1e-12)


def test_lars_differs_from_trust_clipped_at_one_between_lr_and_1():
    """Between lr and 1 the rule takes the full SGD step; clipping the trust ratio itself at 1
    (the rule fastssl used before) would scale it by ~0.5."""
    ws, grads, _, _ = three_regimes(steps=1)
    w, g = torch.nn.Parameter(torch.tensor(ws[1])), torch.tensor(grads[1][0])
    w.grad = g
    LARS([{"params": [w], "weight_decay": WD, "lars": True}], lr=LR, momentum=MOM, eta=ETA).step()
    sgd = torch.tensor(ws[1]) - LR * (g + WD * torch.tensor(ws[1]))
    torch.testing.assert_close(w.detach(), sgd, rtol=0, atol=1e-12)


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 6 * 6, 10),
    )


def run_steps(opt_kwargs, steps=4, lr=0.8):
    net = small_net()
    opt = build_optimizer("lars", net, lr, 1e-4, 0.9, **opt_kwargs)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, 2))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        schedule.step()
    return net, opt


def test_fast_paths_equal_the_loop():
    loop, opt_loop = run_steps({"foreach": False})
    fast, opt_fast = run_steps({"foreach": True})
    for a, b in zip(loop.parameters(), fast.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(opt_loop.state.values(), opt_fast.state.values()):
        torch.testing.assert_close(a["momentum_buffer"], b["momentum_buffer"], rtol=1e-6, atol=1e-7)


def test_compiled_update_equals_the_loop_without_recompiling():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    loop, _ = run_steps({"foreach": False}, steps=3)
    fast, _ = run_steps({"compiled": True}, steps=3)
    for a, b in zip(loop.parameters(), fast.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # One graph per param group, captured on the first step; the lr changes every step (warm-up,
    # cosine) but lives in a device tensor, so later steps reuse the graphs.
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])


def test_lars_zero_weight_takes_unscaled_step():
    w = torch.nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))
    w.grad = torch.ones(3, 2, dtype=torch.float64)
    LARS([{"params": [w], "weight_decay": WD, "lars": True}], lr=LR, eta=ETA).step()
    torch.testing.assert_close(w.detach(), torch.full((3, 2), -LR, dtype=torch.float64))


def test_lars_state_dict_round_trip():
    a, opt_a = run_steps({}, steps=2)
    b = small_net()
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer("lars", b, 0.8, 1e-4, 0.9)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from disk: no shared buffers
    x = torch.randn(4, 3, 8, 8)
    for net, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_lars_step_has_no_host_sync():
    """No tensor -> Python scalar conversion (aten._local_scalar_dense: .item(), bool(), float())
    in the step, which on a GPU would be a host/device sync."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    for foreach in (True, False):
        net = small_net()
        opt = build_optimizer("lars", net, 0.8, 1e-4, foreach=foreach)
        net(torch.randn(4, 3, 8, 8)).sum().backward()
        with Record() as rec:
            opt.step()
        assert rec.ops and torch.ops.aten._local_scalar_dense.default not in rec.ops


def test_warmup_cosine_shape():
    f = warmup_cosine(total_steps=100, warmup_steps=10)
    assert f(0) == 0.1 and f(9) == 1.0
    assert math.isclose(f(10), 1.0) and f(55) < 0.6 and f(99) < 0.01
    assert all(f(s) >= f(s + 1) for s in range(10, 99))


def test_build_optimizer_choices():
    m = torch.nn.Linear(3, 2)
    assert isinstance(build_optimizer("lars", m, 0.1, 0.0), LARS)
    sgd = build_optimizer("sgd", m, 0.1, 0.0)
    assert isinstance(sgd, torch.optim.SGD) and not sgd.defaults["nesterov"]
    assert build_optimizer("sgd", m, 0.1, 0.0, nesterov=True).defaults["nesterov"]
    assert isinstance(build_optimizer("adamw", m, 0.1, 0.0), torch.optim.AdamW)


def test_per_optimizer_default_lr():
    assert base_lr("adamw", None) == DEFAULT_LR["adamw"] == 1e-3
    assert base_lr("lars", None) == base_lr("sgd", None) == 0.4
    assert base_lr("adamw", 0.01) == 0.01
    assert PretrainConfig().lr is None and not PretrainConfig().nesterov
    with pytest.raises(ValueError, match="nesterov"):
        PretrainConfig(nesterov=True)  # lars
    assert PretrainConfig(optimizer="sgd", nesterov=True).nesterov


def test_unclipped_lars_is_lightlys_lars():
    """eta 0.001 without clipping is the rule of lightly's LARS (an independent implementation, the
    PyTorch Lightning Bolts one), with norms and biases in a group of its own without weight decay."""
    lars = pytest.importorskip("lightly.utils.lars")
    ours, _ = run_steps({"eta": 0.001, "clip": False, "foreach": True}, steps=5)
    loop, _ = run_steps({"eta": 0.001, "clip": False, "foreach": False}, steps=5)
    net = small_net()
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    opt = lars.LARS(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.8,
        momentum=0.9,
        weight_decay=1e-4,
        trust_coefficient=0.001,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(5, 2))
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        schedule.step()
    for a, b, c in zip(ours.parameters(), loop.parameters(), net.parameters()):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6)
    # and the clipped default is a different rule on the same data
    clipped, _ = run_steps({}, steps=5)
    assert not torch.allclose(next(clipped.parameters()), next(net.parameters()))
