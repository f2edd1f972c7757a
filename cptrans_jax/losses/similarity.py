"""Token-similarity losses (SPEC §4): cross-similarity (CPTrans ``L_cs``, ROMA global and
local terms) and ROMA's motion term.

All functions take ViT tokens as produced by :mod:`cptrans_jax.models.vit`: a list with one
array per feature layer, either global tokens (B, N, C) or local-window tokens (B, K, w², C).
Tokens are the raw LayerNormed features; nothing is L2-normalized before the similarity
matrices (SPEC §4). Matrix products run at ``Precision.HIGHEST`` so that TPU/GPU runs are
float32-exact instead of using bf16 passes, which matters because the loss is a cosine of
rows of a 576×576 product.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def cosine(x: jax.Array, y: jax.Array, axis: int = -1, eps: float = 1e-8) -> jax.Array:
    """Cosine similarity along ``axis`` with PyTorch's current ``F.cosine_similarity``
    convention: ``sum(x / max(‖x‖, eps) * y / max(‖y‖, eps))``.

    Each vector is normalized on its own (rather than dividing by the clamped product of
    norms, as old torch versions did), which is what torch ≥ 1.12 computes.
    """
    nx = jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps)
    ny = jnp.maximum(jnp.linalg.norm(y, axis=axis, keepdims=True), eps)
    return jnp.sum((x / nx) * (y / ny), axis=axis)


def _gram(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ bᵀ`` over the last two axes, float32-exact on accelerators."""
    return jnp.einsum("...ic,...jc->...ij", a, b, precision=_HIGHEST)


def cross_similarity(src: jax.Array, tgt: jax.Array) -> jax.Array:
    """Cross-similarity CS(S, T) of token sets of shape (..., N, C); returns shape (...).

    M = S·Tᵀ (N×N), c_i = cos(M[i, :], M[:, i]) and CS = mean_i (1 − c_i). CS is 0 when M is
    symmetric (e.g. S == T) and grows as the token-to-token relations of S seen from T differ
    from those of T seen from S.
    """
    if src.shape != tgt.shape:
        raise ValueError(f"cross_similarity: src {src.shape} and tgt {tgt.shape} differ")
    m = _gram(src, tgt)
    # Row i of Mᵀ is column i of M.
    c = cosine(m, jnp.swapaxes(m, -1, -2), axis=-1)
    return jnp.mean(1.0 - c, axis=-1)


def _check_layers(name: str, *layer_lists: Sequence[jax.Array]) -> None:
    n = {len(layers) for layers in layer_lists}
    if len(n) != 1 or 0 in n:
        raise ValueError(
            f"{name}: expected non-empty token lists of equal length, got lengths "
            f"{[len(layers) for layers in layer_lists]}"
        )


def global_cs_loss(src_layers: Sequence[jax.Array], tgt_layers: Sequence[jax.Array]) -> jax.Array:
    """Global cross-similarity loss: CS of (B, N, C) tokens, mean over batch and layers.

    With ``src_layers = tokens(x)`` and ``tgt_layers = tokens(G(x))`` this is CPTrans' L_cs;
    with ROMA's two frames stacked in the batch it is L_global (the ½ Σ over frames is the
    batch mean).
    """
    _check_layers("global_cs_loss", src_layers, tgt_layers)
    per_layer = [
        jnp.mean(cross_similarity(s, t)) for s, t in zip(src_layers, tgt_layers, strict=True)
    ]
    return jnp.mean(jnp.stack(per_layer))


def local_cs_loss(src_layers: Sequence[jax.Array], tgt_layers: Sequence[jax.Array]) -> jax.Array:
    """ROMA's local cross-similarity: (B, K, w², C) window tokens, CS within each window,
    mean over windows, batch and layers."""
    _check_layers("local_cs_loss", src_layers, tgt_layers)
    for s in src_layers:
        if s.ndim != 4:
            raise ValueError(f"local_cs_loss expects (B, K, w², C) tokens, got shape {s.shape}")
    per_layer = [
        jnp.mean(cross_similarity(s, t)) for s, t in zip(src_layers, tgt_layers, strict=True)
    ]
    return jnp.mean(jnp.stack(per_layer))


def motion_loss(
    a0_layers: Sequence[jax.Array],
    a1_layers: Sequence[jax.Array],
    g0_layers: Sequence[jax.Array],
    g1_layers: Sequence[jax.Array],
) -> jax.Array:
    """ROMA's motion term on (B, N, C) tokens of real frames t, t+1 (A0, A1) and of their
    translations (G0, G1):

        Σ_layers mean_{b, i} (1 − cos(row_i(A0·G1ᵀ), row_i(G0·A1ᵀ)))

    Note the *sum* over layers (SPEC §4, §9), unlike the means of the CS terms.
    """
    _check_layers("motion_loss", a0_layers, a1_layers, g0_layers, g1_layers)
    total = jnp.zeros((), jnp.result_type(a0_layers[0]))
    for a0, a1, g0, g1 in zip(a0_layers, a1_layers, g0_layers, g1_layers, strict=True):
        c = cosine(_gram(a0, g1), _gram(g0, a1), axis=-1)
        total = total + jnp.mean(1.0 - c)
    return total
