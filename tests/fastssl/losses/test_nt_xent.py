"""NT-Xent against a slow float64 reference written from the SimCLR paper (Chen et al. 2020, eq. 1)."""

import math
import os
from pathlib import Path

import pytest
import torch

from fastssl.losses import nt_xent, nt_xent_chunked, nt_xent_compiled

os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", str(Path(__file__).resolve().parents[3] / ".cache" / "inductor")
)


def reference_nt_xent(z1, z2, tau):
    """The paper's indexing: z_{2k-1}, z_{2k} are the two views of image k (0-based here: 2k, 2k+1),
    l(i,j) = -log exp(sim(z_i,z_j)/tau) / sum_{k != i} exp(sim(z_i,z_k)/tau),
    L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]. Scalar torch ops in float64, so autograd works."""
    z1, z2 = z1.double(), z2.double()
    z = []
    for k in range(z1.shape[0]):
        z += [z1[k], z2[k]]

    def sim(u, v):
        return (u * v).sum() / (u.norm() * v.norm())

    def ell(i, j):
        num = torch.exp(sim(z[i], z[j]) / tau)
        den = sum(torch.exp(sim(z[i], z[k]) / tau) for k in range(len(z)) if k != i)
        return -torch.log(num / den)

    n = z1.shape[0]
    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def value_and_grads(fn, z1, z2, *args, **kw):
    z1 = z1.detach().clone().requires_grad_(True)
    z2 = z2.detach().clone().requires_grad_(True)
    loss = fn(z1, z2, *args, **kw)
    g1, g2 = torch.autograd.grad(loss, [z1, z2])
    return loss.detach(), g1, g2


def cases():
    g = torch.Generator().manual_seed(0)
    z1, z2 = (
        torch.randn(6, 8, generator=g, dtype=torch.float64),
        torch.randn(6, 8, generator=g, dtype=torch.float64),
    )
    yield "random", z1, z2
    yield "large norms", z1 * 1e3, z2 * 1e3
    yield "mixed norms", z1 * torch.logspace(-3, 3, 6, dtype=torch.float64)[:, None], z2
    yield "near duplicates", z1, z1 + 1e-6 * torch.randn(6, 8, generator=g, dtype=torch.float64)
    yield "N=1", z1[:1], z2[:1]


@pytest.mark.parametrize("tau", [0.05, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_matches_paper_reference(tau, dtype, rtol):
    for name, z1, z2 in cases():
        ref, r1, r2 = value_and_grads(reference_nt_xent, z1, z2, tau)
        loss, g1, g2 = value_and_grads(nt_xent, z1.to(dtype), z2.to(dtype), tau)
        assert loss.dtype == dtype and g1.dtype == dtype, name
        torch.testing.assert_close(loss.double(), ref, rtol=rtol, atol=rtol, msg=name)
        # Gradients scale as 1/|z|: compare against the largest entry so tiny ones don't dominate.
        for g, r in [(g1, r1), (g2, r2)]:
            scale = r.abs().max().item() + 1e-300
            assert (g.double() - r).abs().max().item() <= rtol * scale + 1e-12, name


def test_known_values():
    # N=1: the positive is the only term in the denominator -> loss 0, no gradient.
    loss, g1, g2 = value_and_grads(nt_xent, torch.randn(1, 4), torch.randn(1, 4), 0.1)
    assert loss.item() == 0 and not g1.any() and not g2.any()
    # All 2N rows identical: every logit equals 1/T, loss = log(2N - 1).
    z = torch.ones(5, 3)
    assert math.isclose(nt_xent(z, z, 0.3).item(), math.log(9), rel_tol=1e-6)


def test_bf16_inputs():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(16, 32, generator=g) * 30, torch.randn(16, 32, generator=g) * 30
    b1, b2 = z1.bfloat16(), z2.bfloat16()
    loss, g1, g2 = value_and_grads(nt_xent, b1, b2, 0.1)
    assert loss.dtype == torch.float32 and g1.dtype == torch.bfloat16  # float32 softmax, grads in input dtype
    # Exactly the reference on the bf16-rounded values (float32 maths), and within bf16 rounding
    # of the loss on the unrounded inputs.
    ref, r1, r2 = value_and_grads(reference_nt_xent, b1.double(), b2.double(), 0.1)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.double(), reference_nt_xent(z1, z2, 0.1), rtol=2e-2, atol=0)
    for g, r in [(g1, r1), (g2, r2)]:
        assert (g.double() - r).abs().max() <= 1e-2 * r.abs().max()


def test_autocast_keeps_float32():
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = nt_xent(z1, z2, 0.1)
        chunked = nt_xent_chunked(z1, z2, 0.1, chunk=4)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, nt_xent(z1, z2, 0.1), rtol=1e-6, atol=0)
    torch.testing.assert_close(chunked, nt_xent(z1, z2, 0.1), rtol=1e-6, atol=0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(4, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(4), torch.randn(4))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 8), 0.0)


@pytest.mark.parametrize("chunk", [1, 3, 12, 1024])
def test_chunked_matches_nt_xent(chunk):
    for name, z1, z2 in cases():
        want, w1, w2 = value_and_grads(nt_xent, z1, z2, 0.2)
        got, c1, c2 = value_and_grads(nt_xent_chunked, z1, z2, 0.2, chunk=chunk)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)
        torch.testing.assert_close(c1, w1, rtol=1e-8, atol=1e-12 * w1.abs().max().item(), msg=name)
        torch.testing.assert_close(c2, w2, rtol=1e-8, atol=1e-12 * w2.abs().max().item(), msg=name)


def test_chunked_gradcheck():
    z1 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent_chunked(a, b, 0.3, chunk=2), (z1, z2))


def test_compiled_matches_eager():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    want = value_and_grads(nt_xent, z1, z2, 0.2)
    got = value_and_grads(nt_xent_compiled, z1, z2, 0.2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
