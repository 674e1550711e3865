"""Deep InfoMax estimators against slow float64 references written with explicit loops from the
paper's equations (Hjelm et al. 2019, eqs. 4, 5 and 7)."""

import math
import os
from pathlib import Path

import pytest
import torch

from fastssl.losses.infomax import infonce_mi, jsd_mi, local_scores, prior_matching_loss, reverse_gradient

os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", str(Path(__file__).resolve().parents[3] / ".cache" / "inductor")
)


def softplus(x):
    """log(1 + e^x), rearranged as max(x, 0) + log(1 + e^-|x|) so that large |x| stays finite."""
    return torch.clamp(x, min=0) + torch.log1p(torch.exp(-torch.abs(x)))


def reference_jsd(s):
    """E_P[-sp(-T)] - E_PxP~[sp(T)]: P = pairs (y_i, c_{i,p}), PxP~ = pairs (y_i, c_{j,p}), j != i."""
    s = s.double()
    n, _, p = s.shape
    pos = [-softplus(-s[i, i, k]) for i in range(n) for k in range(p)]
    neg = [softplus(s[i, j, k]) for i in range(n) for j in range(n) if j != i for k in range(p)]
    return sum(pos) / len(pos) - sum(neg) / len(neg)


def reference_infonce(s):
    """mean over positives (i, p) of log[e^{T_pos} / (e^{T_pos} + sum_{j != i, p'} e^{T(y_i, c_{j,p'})})]
    + log K, each log-ratio computed after subtracting the largest candidate score."""
    s = s.double()
    n, _, p = s.shape
    terms = []
    for i in range(n):
        for k in range(p):
            cands = [s[i, i, k]] + [s[i, j, q] for j in range(n) if j != i for q in range(p)]
            m = max(c.item() for c in cands)
            terms.append(s[i, i, k] - m - torch.log(sum(torch.exp(c - m) for c in cands)))
    return sum(terms) / len(terms) + math.log(1 + (n - 1) * p)


def reference_prior(d_prior, d_encoded):
    """-(E_V[log D(v)] + E_P[log(1 - D(y))]) with D = sigmoid(logit)."""
    d_prior, d_encoded = d_prior.double(), d_encoded.double()
    log_d = [torch.log(torch.sigmoid(x)) for x in d_prior]
    log_1md = [torch.log(1 - torch.sigmoid(x)) for x in d_encoded]
    return -(sum(log_d) / len(log_d) + sum(log_1md) / len(log_1md))


ESTIMATORS = [(jsd_mi, reference_jsd), (infonce_mi, reference_infonce)]


def value_and_grad(fn, s):
    s = s.detach().clone().requires_grad_(True)
    out = fn(s)
    return out.detach().double(), torch.autograd.grad(out, s)[0].double()


@pytest.mark.parametrize("fn, ref", ESTIMATORS, ids=["jsd", "infonce"])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_estimator_matches_reference(fn, ref, scale):
    s = torch.randn(4, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * scale
    for got, want in zip(value_and_grad(fn, s), value_and_grad(ref, s)):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("fn, ref", ESTIMATORS, ids=["jsd", "infonce"])
def test_large_scores_float32_finite_and_exact(fn, ref):
    # |T| ~ 1e3: exp overflows float32 at 89, so a naive estimator returns inf or nan here.
    s = torch.randn(3, 3, 4, generator=torch.Generator().manual_seed(1)) * 1000
    got_v, got_g = value_and_grad(fn, s)
    want_v, want_g = value_and_grad(ref, s.double())
    assert torch.isfinite(got_v) and torch.isfinite(got_g).all()
    torch.testing.assert_close(got_v, want_v, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(got_g, want_g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fn, ref", ESTIMATORS, ids=["jsd", "infonce"])
def test_identical_images_carry_no_information(fn, ref):
    # All images identical: T(y_i, c_{j,p}) = t_p for every i, j, so positives and negatives look alike.
    t = torch.randn(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    s = t.expand(5, 5, 6).clone()
    for got, want in zip(value_and_grad(fn, s), value_and_grad(ref, s)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    v = fn(s).item()
    if fn is jsd_mi:  # -(sp(t) + sp(-t)) <= -2 log 2: the JSD bound reaches no information at best
        assert v <= -2 * math.log(2) + 1e-12
    else:  # one score for every position: the softmax cannot beat chance, bound <= 0 ...
        assert v <= 1e-12
        assert infonce_mi(torch.full((5, 5, 6), 3.0)).item() == pytest.approx(
            0.0, abs=1e-6
        )  # ... = 0 if equal


def test_estimators_separate_informative_from_uninformative_scores():
    # Positives much higher than negatives: infoNCE reaches its ceiling log K, JSD its ceiling 0.
    s = torch.full((4, 4, 3), -20.0)
    s[torch.arange(4), torch.arange(4)] = 20.0
    assert infonce_mi(s).item() == pytest.approx(math.log(1 + 3 * 3), abs=1e-6)
    assert jsd_mi(s).item() == pytest.approx(0.0, abs=1e-6)


def test_gradcheck():
    s = torch.randn(3, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(jsd_mi, (s,)) and torch.autograd.gradcheck(infonce_mi, (s,))


def test_local_scores_are_dot_products():
    g = torch.Generator().manual_seed(3)
    y, c = torch.randn(3, 7, generator=g), torch.randn(3, 7, 5, generator=g)
    s = local_scores(y, c)
    for i in range(3):
        for j in range(3):
            for p in range(5):
                assert s[i, j, p].item() == pytest.approx(
                    sum(y[i, e].item() * c[j, e, p].item() for e in range(7)), abs=1e-5
                )
    assert local_scores(y.bfloat16(), c.bfloat16()).dtype == torch.float32


def test_bad_shapes_raise():
    for bad in [torch.zeros(1, 1, 4), torch.zeros(2, 3, 4), torch.zeros(2, 2)]:
        with pytest.raises(ValueError):
            jsd_mi(bad)
        with pytest.raises(ValueError):
            infonce_mi(bad)


def test_prior_matching_loss_matches_reference():
    g = torch.Generator().manual_seed(4)
    for scale in (1.0, 50.0):
        a = torch.randn(6, generator=g, dtype=torch.float64) * scale
        b = torch.randn(5, generator=g, dtype=torch.float64) * scale
        got = prior_matching_loss(a, b)
        if scale == 1.0:
            torch.testing.assert_close(got, reference_prior(a, b), rtol=1e-10, atol=1e-12)
        assert torch.isfinite(got)
        assert torch.autograd.gradcheck(prior_matching_loss, (a.requires_grad_(), b.requires_grad_()))


def test_prior_game_signs():
    """One gradient-descent step on the summed loss, as the training loop takes it: the
    discriminator gets better (its loss falls), the encoder fools it (D(code) rises)."""
    torch.manual_seed(5)
    d = torch.nn.Linear(4, 1)
    code = torch.rand(16, 4, requires_grad=True)
    prior = torch.rand(16, 4)

    def d_loss():
        return prior_matching_loss(d(prior).squeeze(1), d(code).squeeze(1))

    loss = prior_matching_loss(d(prior).squeeze(1), d(reverse_gradient(code)).squeeze(1))
    torch.testing.assert_close(loss, d_loss())  # reversal changes no value
    loss.backward()
    code_grad, d_grads = code.grad.clone(), [p.grad.clone() for p in d.parameters()]
    want = torch.autograd.grad(d_loss(), [code, *d.parameters()])
    torch.testing.assert_close(code_grad, -want[0])  # encoder side: reversed
    for got, w in zip(d_grads, want[1:]):  # discriminator side: as is
        torch.testing.assert_close(got, w)

    before_logit, before_loss = d(code).mean().item(), d_loss().item()
    with torch.no_grad():
        code -= 0.1 * code_grad
    assert d(code).mean().item() > before_logit  # encoder step: looks more like the prior
    with torch.no_grad():
        code += 0.1 * code_grad  # undo, then the discriminator's step
        for p, gr in zip(d.parameters(), d_grads):
            p -= 0.1 * gr
    assert d_loss().item() < before_loss


def test_compiled_matches_eager():
    g = torch.Generator().manual_seed(6)
    s, a, b = torch.randn(6, 6, 4, generator=g), torch.randn(6, generator=g), torch.randn(6, generator=g)

    def terms(s, a, b):
        return jsd_mi(s) + 2 * infonce_mi(s) + 3 * prior_matching_loss(a, reverse_gradient(b))

    def run(fn):
        x = [t.clone().requires_grad_(True) for t in (s, a, b)]
        out = fn(*x)
        return [out.detach(), *torch.autograd.grad(out, x)]

    for got, want in zip(run(torch.compile(terms)), run(terms)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
