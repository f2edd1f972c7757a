r"""Content-aware optimization (CO) weights — CPTrans §3.2, SPEC §4.

For one image and one loss term (the real term with target 1, or the fake term with target 0)
let ℓ_i be the per-patch LSGAN loss of token i (:func:`cptrans_jax.losses.gan.patch_losses`)
and θ all discriminator parameters. CO computes

* g_i = ∇_θ ℓ_i, the per-patch gradient (one vector of |θ| = 1,181,184 numbers per patch),
* ḡ = mean_i g_i, the gradient of the image's unweighted loss,
* δ_i = cos(g_i, ḡ) = g_i·ḡ / (max(‖g_i‖, 1e-8) · max(‖ḡ‖, 1e-8)), PyTorch's
  ``F.cosine_similarity`` convention (each norm clamped on its own),

and up-weights the round(η·N) patches whose gradient agrees *least* with the average
(smallest δ, the "content-rich" set U): w_i = λ_inc / exp(|δ_i|) on U, 1 elsewhere. The weights
are constants (stop-gradient) that multiply ℓ_i in the D and G adversarial losses.

Two evaluations of δ are provided and must agree:

:func:`co_deltas_vmap` — the reference formulation, ``jax.vmap(jax.grad(ℓ_i))`` over patches,
for any token-wise network. The N per-patch gradients (N·|θ| floats, 2.7 GB at the paper size)
are never held at once: patches go through ``jax.lax.map`` in chunks, and per chunk only
g_i·ḡ and ‖g_i‖² are kept, so peak memory is about chunk_size·|θ|. ḡ comes from one
``jax.grad`` of the mean loss, which equals mean_i g_i because the gradient is linear.

:func:`co_deltas_fast` — exact closed form for the 2-layer token-wise MLP of SPEC §3.
For a token t (row vector) with

    h = t W1 + b1,   a = gelu(h),   o = a W2 + b2,   ℓ = mean_c (o_c − target)²,

back-propagation gives e = ∂ℓ/∂o = 2(o − target)/C_out and s = ∂ℓ/∂h = (e W2ᵀ) ⊙ gelu'(h),
and the gradient of every dense layer is an outer product of that layer's input and its
back-propagated signal:

    g = (∂W1, ∂b1, ∂W2, ∂b2) = (t ⊗ s, s, a ⊗ e, e).

Because D acts on each token independently, token i's loss depends only on its own
(t_i, s_i, a_i, e_i), so these formulas *are* the per-patch gradients — nothing is approximated.
Inner products of outer products factorise, ⟨x⊗y, X⟩ = xᵀ X y and ‖x⊗y‖ = ‖x‖‖y‖, hence

    g_i·ḡ  = t_iᵀ Ḡ_W1 s_i + s_i·ḡ_b1 + a_iᵀ Ḡ_W2 e_i + e_i·ḡ_b2,
    ‖g_i‖² = ‖t_i‖²‖s_i‖² + ‖s_i‖² + ‖a_i‖²‖e_i‖² + ‖e_i‖²,

with Ḡ_W1 = mean_j t_j ⊗ s_j = Tᵀ S / N (C×H), ḡ_b1 = mean_j s_j, etc. Everything is a handful
of (N×C)·(C×H) matmuls — the cost of a forward/backward pass — and memory O(N·C + |θ|); no
per-patch gradient is materialised. GELU is the exact (erf) one, and its derivative is taken
with ``jax.jvp`` of the same function, i.e. exactly what autodiff uses in the vmap path.

Matmuls use ``Precision.HIGHEST`` so that TPU/GPU runs stay float32-exact rather than using
bf16/TF32 passes; δ is a cosine of sums over a million terms and its ordering decides U.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from cptrans_jax.models.discriminator import Discriminator

_HIGHEST = jax.lax.Precision.HIGHEST
# Norm clamp of PyTorch's F.cosine_similarity (its default eps).
COS_EPS = 1e-8

Params = Any
DApply = Callable[[Params, jax.Array], jax.Array]


def _check_tokens(tokens: jax.Array) -> None:
    if tokens.ndim != 3:
        raise ValueError(f"CO expects tokens of shape (B, N, C), got shape {tokens.shape}")


def _unwrap(d_params: Params) -> Params:
    """Accept both the inner params collection and a ``{"params": ...}`` variables dict."""
    if isinstance(d_params, dict) and set(d_params) == {"params"}:
        return d_params["params"]
    return d_params


def _tree_vdot(x: Params, y: Params) -> jax.Array:
    return sum(
        jnp.vdot(a.reshape(-1), b.reshape(-1), precision=_HIGHEST)
        for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True)
    )


def _cosine_from_parts(dot: jax.Array, norm_i: jax.Array, norm_bar: jax.Array) -> jax.Array:
    # x·y / (max(‖x‖, eps) · max(‖y‖, eps)) — torch ≥ 1.12 normalises each vector separately.
    return dot / (jnp.maximum(norm_i, COS_EPS) * jnp.maximum(norm_bar, COS_EPS))


def co_deltas_vmap(
    d_apply: DApply,
    d_params: Params,
    tokens: jax.Array,
    target: float | jax.Array,
    chunk_size: int = 64,
) -> jax.Array:
    """δ_i = cos(g_i, ḡ) by per-patch autodiff: ``jax.vmap(jax.grad(ℓ_i))`` in chunks.

    Args:
      d_apply: ``d_apply(d_params, tokens (n, C)) -> (n, C_out)``, any *token-wise* network
        (each output row depends only on its own input row). ``d_params`` may be any pytree;
        the gradient is taken w.r.t. all of its leaves.
      d_params: the discriminator parameters, passed to ``d_apply`` unchanged.
      tokens: (B, N, C) discriminator inputs.
      target: scalar LSGAN target (1.0 real term, 0.0 fake term).
      chunk_size: patches whose gradients are materialised at once (static). Peak memory is
        about B·chunk_size·|θ| floats (the batch is vmapped, so each scan step holds one chunk
        per image). N need not be a multiple: the last chunk is zero-padded and the padded
        patches are dropped before returning.

    Returns:
      δ of shape (B, N), float32.
    """
    _check_tokens(tokens)
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    _, n, c = tokens.shape
    chunk = min(int(chunk_size), n)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def patch_loss(params: Params, token: jax.Array) -> jax.Array:
        # ℓ_i of one token: run D on a batch of one and average its outputs.
        return jnp.mean(jnp.square(d_apply(params, token[None, :]) - target))

    def image_loss(params: Params, toks: jax.Array) -> jax.Array:
        # mean_i ℓ_i, whose gradient is ḡ = mean_i g_i by linearity.
        return jnp.mean(jnp.mean(jnp.square(d_apply(params, toks) - target), axis=-1))

    per_patch_grads = jax.vmap(jax.grad(patch_loss), in_axes=(None, 0))

    def one_image(toks: jax.Array) -> jax.Array:
        g_bar = jax.grad(image_loss)(d_params, toks)
        norm_bar = jnp.sqrt(_tree_vdot(g_bar, g_bar))
        flat_bar = [leaf.reshape(-1) for leaf in jax.tree.leaves(g_bar)]

        def chunk_stats(chunk_tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
            grads = jax.tree.leaves(per_patch_grads(d_params, chunk_tokens))
            # Reduce each (chunk, |leaf|) block to per-patch scalars right away, so only one
            # chunk of gradients is ever alive.
            dot = sum(
                jnp.einsum("kp,p->k", g.reshape(chunk, -1), gb, precision=_HIGHEST)
                for g, gb in zip(grads, flat_bar, strict=True)
            )
            sq = sum(jnp.sum(jnp.square(g.reshape(chunk, -1)), axis=1) for g in grads)
            return dot, sq

        padded = jnp.pad(toks, ((0, pad), (0, 0))).reshape(n_chunks, chunk, c)
        dot, sq = jax.lax.map(chunk_stats, padded)
        dot, sq = dot.reshape(-1)[:n], sq.reshape(-1)[:n]
        return _cosine_from_parts(dot, jnp.sqrt(sq), norm_bar)

    return jax.vmap(one_image)(tokens)


def co_deltas_fast(d_params: Params, tokens: jax.Array, target: float | jax.Array) -> jax.Array:
    """δ_i = cos(g_i, ḡ) in closed form for the 2-layer token-wise MLP (module docstring).

    Args:
      d_params: Flax params ``{"linear1": {"kernel" (C, H), "bias" (H,)}, "linear2":
        {"kernel" (H, C_out), "bias" (C_out,)}}`` (a ``{"params": ...}`` wrapper is accepted),
        i.e. :class:`cptrans_jax.models.Discriminator` with exact GELU.
      tokens: (B, N, C) discriminator inputs.
      target: scalar LSGAN target (1.0 real term, 0.0 fake term).

    Returns:
      δ of shape (B, N), float32 — equal to :func:`co_deltas_vmap` up to float rounding.
    """
    _check_tokens(tokens)
    p = _unwrap(d_params)
    try:
        w1, b1 = p["linear1"]["kernel"], p["linear1"]["bias"]
        w2, b2 = p["linear2"]["kernel"], p["linear2"]["bias"]
    except (KeyError, TypeError) as err:
        raise ValueError(
            "co_deltas_fast needs the token-wise MLP's params {'linear1': {'kernel', 'bias'}, "
            "'linear2': {'kernel', 'bias'}}; use co_deltas_vmap for other discriminators"
        ) from err
    t = jnp.asarray(tokens, jnp.float32)
    n = t.shape[1]
    ein = functools.partial(jnp.einsum, precision=_HIGHEST)

    # Forward pass, keeping the activations the per-patch gradients are built from.
    h = ein("bnc,ch->bnh", t, w1) + b1
    gelu = functools.partial(jax.nn.gelu, approximate=False)
    # One jvp with unit tangent gives gelu(h) and the elementwise gelu'(h) autodiff would use.
    a, gelu_prime = jax.jvp(gelu, (h,), (jnp.ones_like(h),))
    o = ein("bnh,ho->bno", a, w2) + b2

    # Back-propagated signals of each token's own loss ℓ_i = mean_c (o_c − target)².
    e = 2.0 * (o - target) / o.shape[-1]  # ∂ℓ_i/∂o_i = ∂ℓ_i/∂b2
    s = ein("bno,ho->bnh", e, w2) * gelu_prime  # ∂ℓ_i/∂h_i = ∂ℓ_i/∂b1

    # ḡ = mean_i g_i, layer by layer (never more than |θ| numbers per image).
    gw1 = ein("bnc,bnh->bch", t, s) / n
    gb1 = jnp.mean(s, axis=1)
    gw2 = ein("bnh,bno->bho", a, e) / n
    gb2 = jnp.mean(e, axis=1)

    # g_i·ḡ through the outer-product identity ⟨x⊗y, X⟩ = xᵀXy.
    dot = (
        jnp.sum(ein("bnc,bch->bnh", t, gw1) * s, axis=-1)
        + ein("bnh,bh->bn", s, gb1)
        + jnp.sum(ein("bnh,bho->bno", a, gw2) * e, axis=-1)
        + ein("bno,bo->bn", e, gb2)
    )

    def sq(x: jax.Array) -> jax.Array:
        return jnp.sum(jnp.square(x), axis=-1)

    # ‖x⊗y‖² = ‖x‖²‖y‖².
    norm_i = jnp.sqrt(sq(t) * sq(s) + sq(s) + sq(a) * sq(e) + sq(e))
    norm_bar = jnp.sqrt(
        jnp.sum(jnp.square(gw1), axis=(1, 2))
        + sq(gb1)
        + jnp.sum(jnp.square(gw2), axis=(1, 2))
        + sq(gb2)
    )
    return _cosine_from_parts(dot, norm_i, norm_bar[:, None])


def _validate_hyperparameters(eta: float, lambda_inc: float) -> tuple[float, float]:
    # Both are static hyperparameters: round(η·N) fixes an array shape at trace time.
    try:
        eta, lambda_inc = float(eta), float(lambda_inc)
    except (TypeError, jax.errors.ConcretizationTypeError) as err:
        raise ValueError(
            "CO's eta and lambda_inc must be static Python numbers (round(eta*N) fixes the size "
            "of the content-rich set at trace time)"
        ) from err
    if not 0.0 <= eta <= 1.0:  # also rejects NaN
        raise ValueError(f"CO ratio eta must lie in [0, 1], got {eta}")
    if not lambda_inc > 0.0:
        raise ValueError(f"CO weight lambda_inc must be > 0, got {lambda_inc}")
    return eta, lambda_inc


def num_selected(num_patches: int, eta: float) -> int:
    """|U| = round(η·N) with Python's ``round`` (round-half-to-even: η·N = 2.5 → 2, 3.5 → 4)."""
    eta, _ = _validate_hyperparameters(eta, 1.0)
    return int(round(eta * num_patches))


def co_weights(
    deltas: jax.Array, eta: float = 0.4, lambda_inc: float = 2.0
) -> tuple[jax.Array, jax.Array]:
    """CO weights from δ: λ_inc / exp(|δ_i|) on the round(η·N) smallest δ, 1 elsewhere.

    Selection is a *stable* ascending argsort of δ along the patch axis, so among equal δ the
    lower patch index is taken first; NaNs sort last and are never selected before a number.

    Args:
      deltas: (B, N) cosines from :func:`co_deltas_fast` or :func:`co_deltas_vmap`.
      eta: fraction of patches in the content-rich set U, in [0, 1] (static). |U| =
        round(η·N) with Python's round-half-to-even (see :func:`num_selected`).
      lambda_inc: weight scale λ_inc > 0 (static); selected weights lie in
        [λ_inc/e, λ_inc] because |δ| ≤ 1.

    Returns:
      ``(weights, selected)``: float (B, N) weights under ``stop_gradient`` and the bool (B, N)
      membership mask of U.
    """
    eta, lambda_inc = _validate_hyperparameters(eta, lambda_inc)
    deltas = jnp.asarray(deltas)
    if deltas.ndim != 2:
        raise ValueError(f"co_weights expects deltas of shape (B, N), got {deltas.shape}")
    k = num_selected(deltas.shape[-1], eta)
    order = jnp.argsort(deltas, axis=-1, stable=True)
    # Rank of each patch in ascending-δ order; U is the k lowest ranks.
    ranks = jnp.argsort(order, axis=-1, stable=True)
    selected = ranks < k
    weights = jnp.where(selected, lambda_inc / jnp.exp(jnp.abs(deltas)), 1.0)
    return jax.lax.stop_gradient(weights.astype(deltas.dtype)), selected


def _default_d_apply(width: int) -> DApply:
    module = Discriminator(width=width)

    def apply(params: Params, toks: jax.Array) -> jax.Array:
        return module.apply({"params": params}, toks)

    return apply


def co_weights_for(
    d_params: Params,
    tokens: jax.Array,
    target: float | jax.Array,
    *,
    eta: float = 0.4,
    lambda_inc: float = 2.0,
    impl: Literal["fast", "vmap"] = "fast",
    chunk_size: int = 64,
    d_apply: DApply | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """CO weights of one loss term: δ by ``impl``, then :func:`co_weights`.

    Args:
      d_params: discriminator params (inner collection or ``{"params": ...}``).
      tokens: (B, N, C) tokens the term is evaluated on (real y for w, G(x) for w̃).
      target: 1.0 for the real term, 0.0 for the fake term.
      eta, lambda_inc: see :func:`co_weights`.
      impl: ``"fast"`` (closed form, token-wise MLP only) or ``"vmap"`` (per-patch autodiff).
      chunk_size: patches per chunk for ``impl="vmap"``.
      d_apply: network for ``impl="vmap"``, called with ``d_params`` as given; default
        :class:`Discriminator` of width C on the (unwrapped) params. Ignored by
        ``impl="fast"``, which assumes that MLP.

    Returns:
      ``(weights, selected, deltas)``, each (B, N); weights are stop-gradient constants.
    """
    _check_tokens(tokens)
    if impl == "fast":
        deltas = co_deltas_fast(d_params, tokens, target)
    elif impl == "vmap":
        if d_apply is None:
            # The default network takes the inner collection; a caller's d_apply gets the
            # params exactly as given.
            d_apply, d_params = _default_d_apply(tokens.shape[-1]), _unwrap(d_params)
        deltas = co_deltas_vmap(d_apply, d_params, tokens, target, chunk_size)
    else:
        raise ValueError(f"impl must be 'fast' or 'vmap', got {impl!r}")
    weights, selected = co_weights(deltas, eta, lambda_inc)
    return weights, selected, deltas
