"""LARS against its formula written out by hand; the schedule's shape; parameter groups."""
import math

import torch

from fastssl.optim import LARS, build_optimizer, param_groups, warmup_cosine


def test_param_groups_exclude_bias_and_bn():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(m, 1e-4)
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[2].weight)}
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0 and not no_decay["lars"]


def test_lars_matches_reference():
    torch.manual_seed(0)
    w0, v = torch.randn(5, 3, dtype=torch.float64), None
    w = torch.nn.Parameter(w0.clone())
    opt = LARS([{"params": [w], "weight_decay": 0.1, "lars": True}], lr=0.5, momentum=0.9, eta=0.02)
    ref = w0.clone()
    for _ in range(3):
        g = torch.randn(5, 3, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        d = g + 0.1 * ref  # reference from the LARS paper, with trust ratio clipped at 1
        trust = min(1.0, 0.02 * ref.norm().item() / d.norm().item())
        v = trust * d if v is None else 0.9 * v + trust * d
        ref = ref - 0.5 * v
        assert torch.allclose(w.detach(), ref, atol=1e-12)


def test_warmup_cosine_shape():
    f = warmup_cosine(total_steps=100, warmup_steps=10)
    assert f(0) == 0.1 and f(9) == 1.0
    assert math.isclose(f(10), 1.0) and f(55) < 0.6 and f(99) < 0.01
    assert all(f(s) >= f(s + 1) for s in range(10, 99))


def test_build_optimizer_choices():
    m = torch.nn.Linear(3, 2)
    assert isinstance(build_optimizer("lars", m, 0.1, 0.0), LARS)
    assert isinstance(build_optimizer("sgd", m, 0.1, 0.0), torch.optim.SGD)
