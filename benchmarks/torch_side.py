"""The PyTorch side of ``iteration.py --against torch``: the same iteration at full size.

The networks and the iteration are the parity tests' PyTorch references (``tests/torch_*.py``,
written from SPEC independently of the JAX code); torch is a test and benchmark dependency only.
Two things make them a fair full-size opponent:

* the frozen ViT has ``requires_grad=False`` (no weight gradients are computed for it; the
  authors' code computes them and throws them away), and
* CO's δ comes from the closed form of the per-patch gradient inner products (below) instead
  of per-patch autodiff, which at 576 patches × 1.18 M parameters holds 2.7 GB per image —
  the same algorithm our fast path uses, so both frameworks do the same arithmetic.

Closed form (SPEC §4; D is Linear → GELU(erf) → Linear applied to each token): for token t,
h = t W1ᵀ + b1, a = gelu(h), o = a W2ᵀ + b2, ℓ = mean (o − target)²; e = ∂ℓ/∂o = 2(o − target)/C,
s = ∂ℓ/∂h = (e W2) ⊙ gelu'(h). The per-patch gradient is (s ⊗ t, s, e ⊗ a, e), so
g_i·ḡ and ‖g_i‖ reduce to a few (N×C)(C×H) products, as in ``losses/content_aware.py``.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from torch_co_reference import torch_co_weights  # noqa: E402
from torch_iteration_reference import torch_iteration  # noqa: E402
from torch_reference import (  # noqa: E402
    TorchDiscriminator,
    TorchGenerator,
    TorchViT,
    randomize_,
)

__all__ = ["TorchNets", "build_torch_nets", "torch_co_closed_form", "torch_iteration"]


class TorchNets:
    """Full-size G (ngf 64, 9 blocks), ViT-B/16-384 (blocks 0–5, frozen) and D (768)."""

    def __init__(self, seed: int = 0):
        self.G = randomize_(TorchGenerator(ngf=64, n_blocks=9), seed)
        self.vit = randomize_(TorchViT(384, 16, 768, 6, 12, 3072), seed + 1).requires_grad_(False)
        self.D = randomize_(TorchDiscriminator(768), seed + 2)


def build_torch_nets(seed: int = 0) -> TorchNets:
    return TorchNets(seed)


def _gelu_and_slope(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Exact GELU x·Φ(x) and its derivative Φ(x) + x·φ(x).
    cdf = 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * h * h) / math.sqrt(2.0 * math.pi)
    return h * cdf, cdf + h * pdf


@torch.no_grad()
def torch_co_deltas_closed_form(D: TorchDiscriminator, tokens: torch.Tensor, target: float):
    """δ (B, N) = cos(g_i, mean_j g_j) over all of D's parameters, without per-patch grads."""
    t = tokens.detach()
    w1, b1 = D.linear1.weight, D.linear1.bias  # (H, C), (H,)
    w2, b2 = D.linear2.weight, D.linear2.bias  # (O, H), (O,)
    h = t @ w1.T + b1
    a, slope = _gelu_and_slope(h)
    o = a @ w2.T + b2
    e = 2.0 * (o - target) / o.shape[-1]
    s = (e @ w2) * slope
    n = t.shape[1]
    # Mean gradient ḡ per image: (∂W1, ∂b1, ∂W2, ∂b2) averaged over patches.
    gw1 = s.transpose(1, 2) @ t / n  # (B, H, C)
    gb1 = s.mean(1)
    gw2 = e.transpose(1, 2) @ a / n  # (B, O, H)
    gb2 = e.mean(1)
    dot = (
        ((s @ gw1) * t).sum(-1)
        + (s * gb1[:, None]).sum(-1)
        + ((e @ gw2) * a).sum(-1)
        + (e * gb2[:, None]).sum(-1)
    )

    def sq(x):
        return (x * x).sum(-1)

    norm_i = torch.sqrt(sq(t) * sq(s) + sq(s) + sq(a) * sq(e) + sq(e))
    norm_bar = torch.sqrt(sq(gw1.flatten(1)) + sq(gb1) + sq(gw2.flatten(1)) + sq(gb2))  # (B,)
    eps = 1e-8  # F.cosine_similarity's clamp, each norm on its own
    return dot / (norm_i.clamp_min(eps) * norm_bar.clamp_min(eps)[:, None])


def torch_co_closed_form(D, tokens, target, eta=0.4, lambda_inc=2.0):
    """``(weights, selected, deltas)`` as ``torch_co_reference.torch_co_weights_for``."""
    deltas = torch_co_deltas_closed_form(D, tokens, target)
    weights, selected = torch_co_weights(deltas, eta, lambda_inc)
    return weights, selected, deltas


def state_dicts(nets: TorchNets) -> dict[str, dict[str, np.ndarray]]:
    """numpy state dicts of G, ViT and D (for the JAX converters)."""
    return {
        name: {k: v.detach().numpy() for k, v in getattr(nets, name).state_dict().items()}
        for name in ("G", "vit", "D")
    }
