"""Least-squares GAN terms, per patch and CO-weighted (SPEC §4 "Losses").

The token-wise discriminator outputs C values (768 in the paper) for each of the T tokens of an
image. The **per-patch loss** of token i is the mean over those outputs,
ℓ_i(target) = mean_c (D_c(t_i) − target)², with target 1 for real and 0 for fake (the
generator's term uses 1 on fakes). An image's loss is a (weighted) mean of ℓ_i over patches;
with all weights 1 this is exactly the plain MSE ``mean((d_out − target)²)`` that ROMA uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def patch_losses(d_out: jax.Array, target: float | jax.Array) -> jax.Array:
    """Per-patch LSGAN losses ℓ_i = mean over the last (channel) axis of (d_out − target)².

    Args:
      d_out: discriminator outputs (..., T, C).
      target: 1.0 (real / generator term) or 0.0 (fake); anything broadcastable to ``d_out``.

    Returns:
      (..., T) per-patch losses.
    """
    d_out = jnp.asarray(d_out)
    return jnp.mean(jnp.square(d_out - target), axis=-1)


def weighted_gan_loss(
    d_out: jax.Array, target: float | jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Mean over batch and patches of w_i·ℓ_i (SPEC §4).

    Args:
      d_out: discriminator outputs (B, T, C) (any leading shape works).
      target: LSGAN target, 1.0 or 0.0.
      weights: CO weights broadcastable to (B, T); ``None`` means all ones, i.e. plain MSE.
        They are used as given: CO weights are already stop-gradient constants
        (:func:`cptrans_jax.losses.content_aware.co_weights`).

    Returns:
      Scalar loss.
    """
    losses = patch_losses(d_out, target)
    if weights is None:
        return jnp.mean(losses)
    weights = jnp.asarray(weights)
    # Fail loudly on a (B, T) / (B, T') mismatch instead of silently broadcasting something odd.
    if jnp.broadcast_shapes(weights.shape, losses.shape) != losses.shape:
        raise ValueError(
            f"weights of shape {weights.shape} do not broadcast to the per-patch losses "
            f"of shape {losses.shape}"
        )
    return jnp.mean(weights * losses)
