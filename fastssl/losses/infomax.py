"""Deep InfoMax estimators as pure functions of score tensors (Hjelm et al. 2019, "Learning deep
representations by mutual information estimation and maximization", ICLR; eqs. 2-8).

A score is the critic T(global_i, local_{j,p}): the global feature vector of image i against
position p of image j's feature map. All estimators take the full score tensor

    scores  (N, N, P) float, scores[i, j, p] = T(y_i, c_{j,p})

where i == j are samples of the joint P (positives) and i != j of the product of marginals P x P~
(negatives: the other images of the batch). The global-MI term uses the same functions with P = 1.
Every estimator returns the MI *estimate* (to be maximised) as a 0-d tensor in float32 or wider:

    jsd_mi      E_P[-softplus(-T)] - E_PxP~[softplus(T)]           (eq. 4 without its 2 log 2
                constant, which changes no gradient); means over all (i, p) and all (i, j != i, p)
    infonce_mi  E_{i,p}[ T(y_i,c_{i,p}) - log( exp T(y_i,c_{i,p}) + sum_{j != i, p'} exp T(y_i,c_{j,p'}) ) ]
                + log K,  K = 1 + (N - 1) P candidates per positive (eq. 5 as a K-way classification
                of the positive among all positions of the other images; the log K makes it the
                usual lower bound, <= log K)

prior_matching_loss is the discriminator's binary cross-entropy of the prior-matching game (eq. 7).
"""

import math

import torch
import torch.nn.functional as F


def _check(scores: torch.Tensor) -> None:
    if scores.ndim != 3 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be (N, N, P), got {tuple(scores.shape)}")
    if scores.shape[0] < 2:
        raise ValueError("Deep InfoMax needs a batch of at least 2 images: the others are the negatives")


def _positives(scores: torch.Tensor) -> torch.Tensor:
    """(N, N, P) -> (N, P) the diagonal scores[i, i, :]."""
    return torch.diagonal(scores, dim1=0, dim2=1).t()


def _float(scores: torch.Tensor) -> torch.Tensor:
    # bf16 scores under autocast would lose the small differences between positives and negatives.
    return scores.to(torch.promote_types(scores.dtype, torch.float32))


def local_scores(g: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Dot-product critic. g (N, E) global embeddings, c (N, E, P) local embeddings -> (N, N, P)."""
    return torch.einsum("ie,jep->ijp", _float(g), _float(c))


def jsd_mi(scores: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon MI estimate (the paper's default). scores (N, N, P) -> 0-d."""
    _check(scores)
    s = _float(scores)
    n, _, p = s.shape
    pos = _positives(s)
    e_pos = -F.softplus(-pos).mean()
    e_neg = (F.softplus(s).sum() - F.softplus(pos).sum()) / (n * (n - 1) * p)
    return e_pos - e_neg


def infonce_mi(scores: torch.Tensor) -> torch.Tensor:
    """infoNCE MI estimate. scores (N, N, P) -> 0-d."""
    _check(scores)
    s = _float(scores)
    n, _, p = s.shape
    pos = _positives(s)  # (N, P)
    self_mask = torch.eye(n, dtype=torch.bool, device=s.device)[:, :, None].expand_as(s)
    neg_lse = torch.logsumexp(s.masked_fill(self_mask, float("-inf")).reshape(n, -1), dim=1)  # (N,)
    log_softmax = pos - torch.logaddexp(pos, neg_lse[:, None])
    return log_softmax.mean() + math.log(1 + (n - 1) * p)


DIM_ESTIMATORS = {"jsd": jsd_mi, "infonce": infonce_mi}


def prior_matching_loss(d_prior: torch.Tensor, d_encoded: torch.Tensor) -> torch.Tensor:
    """Discriminator loss of prior matching: -(E_V[log D(v)] + E_P[log(1 - D(y))]).

    d_prior (M,) logits of D on prior samples v, d_encoded (N,) logits on encoded features y.
    The discriminator minimises it; the encoder maximises it (makes y look like prior samples), which
    the caller gets by passing y through `reverse_gradient` before D, so one backward serves both."""
    d_prior, d_encoded = _float(d_prior), _float(d_encoded)
    # log D = -softplus(-logit), log(1 - D) = -softplus(logit): stable for large logits.
    return F.softplus(-d_prior).mean() + F.softplus(d_encoded).mean()


def reverse_gradient(x: torch.Tensor) -> torch.Tensor:
    """Identity in forward, gradient times -1 in backward (Ganin & Lempitsky 2015). Written as
    2 x.detach() - x rather than an autograd.Function so that torch.compile sees plain ops."""
    return 2 * x.detach() - x
