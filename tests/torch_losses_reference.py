"""PyTorch references of the loss terms (SPEC §4), written from SPEC, not from our JAX code.

Conventions (chosen to be natural in PyTorch):

* tokens are (..., N, C) tensors ("NLC"), one tensor per ViT layer in a list;
* images are NCHW;
* flows are (B, H, W, 2) in *pixels*, ``flow[..., 0]`` the x (column) and ``flow[..., 1]`` the
  y (row) displacement — the layout and order of ``grid_sample`` grids;
* CTN noise z is (B, H, W, 2) in the same layout as the flow.

Tests only: torch is never imported by the package. Other parity tests (e.g. a full training
iteration) import these functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def torch_cosine(x: torch.Tensor, y: torch.Tensor, dim: int = -1, eps: float = 1e-8):
    """``F.cosine_similarity`` (current torch: each vector divided by max(‖·‖, eps))."""
    return F.cosine_similarity(x, y, dim=dim, eps=eps)


def torch_cross_similarity(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """CS(S, T) of (..., N, C) tokens → (...): M = S·Tᵀ, c_i = cos(M[i,:], M[:,i]),
    mean_i (1 − c_i). Raw tokens, no L2 normalization."""
    m = src @ tgt.transpose(-1, -2)
    c = torch_cosine(m, m.transpose(-1, -2), dim=-1)
    return (1.0 - c).mean(dim=-1)


def torch_global_cs(
    src_layers: Sequence[torch.Tensor], tgt_layers: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Global CS loss: lists of (B, N, C) tokens per layer; mean over batch, then layers."""
    per_layer = [
        torch_cross_similarity(s, t).mean() for s, t in zip(src_layers, tgt_layers, strict=True)
    ]
    return torch.stack(per_layer).mean()


def torch_local_cs(
    src_layers: Sequence[torch.Tensor], tgt_layers: Sequence[torch.Tensor]
) -> torch.Tensor:
    """ROMA local CS loss: lists of (B, K, w², C) window tokens; CS per window, mean over
    windows and batch, then over layers."""
    per_layer = []
    for s, t in zip(src_layers, tgt_layers, strict=True):
        b, k, n, c = s.shape
        cs = torch_cross_similarity(s.reshape(b * k, n, c), t.reshape(b * k, n, c))
        per_layer.append(cs.mean())
    return torch.stack(per_layer).mean()


def torch_motion(
    a0_layers: Sequence[torch.Tensor],
    a1_layers: Sequence[torch.Tensor],
    g0_layers: Sequence[torch.Tensor],
    g1_layers: Sequence[torch.Tensor],
) -> torch.Tensor:
    """ROMA motion loss on (B, N, C) tokens of real frames A0, A1 and translations G0, G1:
    Σ_layers mean_{b,i} (1 − cos(row_i(A0·G1ᵀ), row_i(G0·A1ᵀ))) — a *sum* over layers."""
    total = 0.0
    for a0, a1, g0, g1 in zip(a0_layers, a1_layers, g0_layers, g1_layers, strict=True):
        m_real_fake = torch.bmm(a0, g1.transpose(1, 2))
        m_fake_real = torch.bmm(g0, a1.transpose(1, 2))
        total = total + (1.0 - torch_cosine(m_real_fake, m_fake_real, dim=-1)).mean()
    return total


def torch_warp(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear backward warp of NCHW ``images`` by a (B, H, W, 2) pixel flow [dx, dy]:
    output(p) = image(p + flow(p)), border replicate.

    ``grid_sample(align_corners=True)`` maps −1/+1 to the centres of the first/last pixel, so
    the pixel coordinate q becomes 2·q/(size − 1) − 1.
    """
    _, _, h, w = images.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=flow.dtype), torch.arange(w, dtype=flow.dtype), indexing="ij"
    )
    qx = xs[None] + flow[..., 0]
    qy = ys[None] + flow[..., 1]
    grid = torch.stack([2.0 * qx / (w - 1) - 1.0, 2.0 * qy / (h - 1) - 1.0], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


def torch_minmax(w: torch.Tensor) -> torch.Tensor:
    """Per-image min–max of a (B, h, w) map to [0, 1]; a constant map gives all ones."""
    lo = w.amin(dim=(1, 2), keepdim=True)
    hi = w.amax(dim=(1, 2), keepdim=True)
    span = hi - lo
    out = (w - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, out, torch.ones_like(w))


def torch_gaussian_kernel(sigma: float) -> torch.Tensor:
    """Normalized 1-D Gaussian of std ``sigma``, radius ⌈2σ⌉ (size 4σ+1 rounded up to odd)."""
    radius = math.ceil(2.0 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (k / k.sum()).float()


def torch_ctn_flow(
    weight_map: torch.Tensor, noise: torch.Tensor, gamma: float, sigma: float
) -> torch.Tensor:
    """CTN flow F = Smooth(Normalize(w̃)·γ·z) → (B, H, W, 2) pixels, [dx, dy] order.

    ``weight_map`` (B, g, g) is min–max normalized on its grid (constant → ones), resized to
    H×W with ``F.interpolate(mode='bilinear', align_corners=False)``, multiplied by γ and by
    ``noise`` z (B, H, W, 2), and each of the two channels is blurred by a 2-D Gaussian (the
    outer product of :func:`torch_gaussian_kernel`) with zero padding. Detached.
    """
    b, h, w, _ = noise.shape
    weights = torch_minmax(weight_map.to(noise.dtype))
    weights = F.interpolate(weights[:, None], size=(h, w), mode="bilinear", align_corners=False)
    flow = weights * gamma * noise.permute(0, 3, 1, 2)  # (B, 2, H, W)
    if sigma > 0:
        k1 = torch_gaussian_kernel(sigma).to(noise.dtype)
        k2 = (k1[:, None] * k1[None, :])[None, None].repeat(2, 1, 1, 1)
        flow = F.conv2d(flow, k2, padding=k1.numel() // 2, groups=2)
    return flow.permute(0, 2, 3, 1).detach()


def torch_ctn_loss(
    generator: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, flow: torch.Tensor
) -> torch.Tensor:
    """L_ctn = mean((W(G(x), F) − G(W(x, F)))²) for NCHW ``images`` and a pixel flow."""
    return ((torch_warp(generator(images), flow) - generator(torch_warp(images, flow))) ** 2).mean()
