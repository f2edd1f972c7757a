"""PyTorch reference of CPTrans' content-aware optimization (CO) and LSGAN terms, from SPEC §4.

Written straight from the definitions, independently of the JAX code: per-patch gradients
g_i = ∇_θ ℓ_i come from ``torch.func.vmap(torch.func.grad(...))`` over a ``functional_call`` of
the discriminator (all of its parameters), ḡ is their plain mean, δ uses
``F.cosine_similarity`` (eps 1e-8), and U is taken with a stable ascending argsort (ties →
lower patch index, as in the JAX code). Tests only: torch is never imported by the package.

Typical use in a parity test::

    net = randomize_(TorchDiscriminator(dim), seed=0)            # torch_reference
    w, sel, delta = torch_co_weights_for(net, tokens, 1.0, eta=0.4, lambda_inc=2.0)
    loss = torch_weighted_gan_loss(net(tokens), 1.0, w)
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap


def torch_patch_losses(d_out: torch.Tensor, target: float) -> torch.Tensor:
    """ℓ_i = mean over the last axis of (d_out − target)²: (..., T, C) → (..., T)."""
    return ((d_out - target) ** 2).mean(dim=-1)


def torch_weighted_gan_loss(
    d_out: torch.Tensor, target: float, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over batch and patches of w_i·ℓ_i (weights ``None`` → plain MSE)."""
    losses = torch_patch_losses(d_out, target)
    return losses.mean() if weights is None else (weights * losses).mean()


def torch_per_patch_grads(
    net: nn.Module, tokens: torch.Tensor, target: float, chunk_size: int | None = None
) -> list[torch.Tensor]:
    """All per-patch gradients of one image, flattened, in row blocks: [(n_k, |θ|)], Σ n_k = N.

    Kept as blocks: one (N, |θ|) matrix is 5.4 GB in float64 at the paper size, and joining the
    blocks (or a cosine over the whole matrix) would hold two or three of it at once.

    Args:
      net: token-wise discriminator (e.g. ``torch_reference.TorchDiscriminator``).
      tokens: (N, C) tokens of one image.
      target: LSGAN target (1.0 real, 0.0 fake).
      chunk_size: patches per ``vmap`` call (bounds the vmap's working memory; the result
        is (N, |θ|) anyway). ``None`` = all at once.
    """
    params = {k: v.detach() for k, v in net.named_parameters()}

    def patch_loss(p: dict[str, torch.Tensor], token: torch.Tensor) -> torch.Tensor:
        out = functional_call(net, p, (token[None, :],))
        return ((out - target) ** 2).mean()

    per_patch = vmap(grad(patch_loss), in_dims=(None, 0))
    step = chunk_size or tokens.shape[0]
    rows = []
    for start in range(0, tokens.shape[0], step):
        g = per_patch(params, tokens[start : start + step].detach())
        rows.append(torch.cat([g[k].reshape(g[k].shape[0], -1) for k in params], dim=1))
    return rows


def torch_co_deltas(
    net: nn.Module,
    tokens: torch.Tensor,
    target: float,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """δ_i = cos(g_i, mean_j g_j) per image: tokens (B, N, C) → (B, N), returned in float32.

    ``dtype=torch.float64`` evaluates a double-precision copy of ``net`` (``net`` itself is
    untouched) — a ground truth for paper-size checks, where float32 torch is itself ~2e-5 off
    (its mean and norms run over 576 × 1,181,184 gradient entries). Holds one image's
    (N, |θ|) gradient matrix at a time (2.7 GB in float32 at the paper size, in blocks).
    """
    if dtype != torch.float32:
        net = copy.deepcopy(net).to(dtype)
        tokens = tokens.to(dtype)
    out = []
    for b in range(tokens.shape[0]):
        blocks = torch_per_patch_grads(net, tokens[b], target, chunk_size)
        g_bar = sum(block.sum(dim=0) for block in blocks)[None] / tokens.shape[1]
        out.append(
            torch.cat([F.cosine_similarity(block, g_bar, dim=1, eps=1e-8) for block in blocks])
        )
    return torch.stack(out).float()


def torch_co_weights(
    deltas: torch.Tensor, eta: float = 0.4, lambda_inc: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, selected) from δ (B, N): the round(η·N) smallest δ (Python round, stable
    ascending sort) get λ_inc / exp(|δ|), the rest 1. Weights are detached."""
    n = deltas.shape[-1]
    k = round(eta * n)
    order = torch.argsort(deltas, dim=-1, stable=True)[..., :k]
    selected = torch.zeros_like(deltas, dtype=torch.bool).scatter_(-1, order, True)
    weights = torch.where(selected, lambda_inc / torch.exp(deltas.abs()), torch.ones_like(deltas))
    return weights.detach(), selected


def torch_co_weights_for(
    net: nn.Module,
    tokens: torch.Tensor,
    target: float,
    eta: float = 0.4,
    lambda_inc: float = 2.0,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(weights, selected, deltas)`` of one loss term, each (B, N); ``dtype`` as in
    :func:`torch_co_deltas`."""
    deltas = torch_co_deltas(net, tokens, target, chunk_size, dtype)
    weights, selected = torch_co_weights(deltas, eta, lambda_inc)
    return weights, selected, deltas
