"""The token-wise MLP discriminator and ROMA's multiscale region pooling (SPEC §3).

D maps each ViT token independently: Linear → exact GELU → Linear (768 → 768 → 768). CPTrans
feeds it the 576 raw layer-5 tokens; ROMA appends mean-pooled windows at five scales (785
tokens in all). Because D is token-wise, content-aware optimization can compute per-patch
gradients in closed form (see :mod:`cptrans_jax.losses`).

``Discriminator.dtype``/``precision`` are the compute dtype and matmul precision of its two
dense layers (:mod:`cptrans_jax.precision`); its parameters and its outputs are float32. The
multiscale pooling is not part of D and always runs at ``Precision.HIGHEST`` on float32 tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cptrans_jax.precision import (
    DEFAULT_DTYPE,
    DEFAULT_PRECISION,
    Dtype,
    Precision,
    float32_at_least,
)

# ROMA's window sizes, in the order their pooled tokens are appended.
ROMA_SCALES = (2, 4, 6, 8, 12)


def torch_linear_init(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default ``nn.Linear`` init for weight and bias: U(±1/√fan_in)."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Discriminator(nn.Module):
    """Token-wise MLP: (..., T, C) → (..., T, C), float32 outputs whatever ``dtype``."""

    width: int = 768
    dtype: Dtype = DEFAULT_DTYPE
    precision: Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        if tokens.shape[-1] != self.width:
            raise ValueError(
                f"Discriminator of width {self.width} got tokens of width {tokens.shape[-1]}"
            )
        init = torch_linear_init(self.width)
        dense = functools.partial(
            nn.Dense,
            self.width,
            kernel_init=init,
            bias_init=init,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            precision=self.precision,
        )
        h = nn.gelu(dense(name="linear1")(tokens), approximate=False)
        # The per-patch LSGAN losses are reduced from these scores: hand them over in float32.
        return float32_at_least(dense(name="linear2")(h))


@functools.lru_cache(maxsize=16)
def multiscale_pool_matrix(grid: int, scales: tuple[int, ...] = ROMA_SCALES) -> np.ndarray:
    """(num_windows, grid²) averaging matrix of ROMA's region pooling.

    For each scale ``a`` windows start at rows and columns 0, a, 2a, … (row-major); a window
    covers rows i..i+a *inclusive* (a+1 rows, clipped at the grid) and columns j..j+a−1 —
    the authors' asymmetry, reproduced on purpose (SPEC §3).
    """
    rows = []
    for a in scales:
        for i in range(0, grid, a):
            for j in range(0, grid, a):
                mask = np.zeros((grid, grid), np.float64)
                mask[i : min(i + a + 1, grid), j : min(j + a, grid)] = 1.0
                rows.append((mask / mask.sum()).reshape(-1))
    return np.stack(rows).astype(np.float32)


def multiscale_tokens(tokens: jax.Array, scales: tuple[int, ...] = ROMA_SCALES) -> jax.Array:
    """Raw tokens (B, N, C) followed by their pooled windows: (B, N + windows, C)."""
    n = tokens.shape[-2]
    grid = int(round(np.sqrt(n)))
    if grid * grid != n:
        raise ValueError(f"multiscale pooling needs a square token grid, got {n} tokens")
    pool = jnp.asarray(multiscale_pool_matrix(grid, tuple(scales)), tokens.dtype)
    pooled = jnp.einsum("wn,...nc->...wc", pool, tokens, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([tokens, pooled], axis=-2)
