"""The precision policy: the computation dtype and matmul precision of G, the ViT and D.

Two config fields choose it (``train.compute_dtype``, ``train.matmul_precision``); the
defaults, float32 and highest, are what the parity tests check against PyTorch.

* **compute dtype** (``float32`` | ``bfloat16``) — the dtype the three networks compute in:
  their convolutions, dense layers, attention and activations. Parameters stay float32
  (``param_dtype``; a layer casts its kernel for the product, so gradients and Adam's moments
  are float32), and so do every network's *outputs*: G's frames, the ViT's normed tokens and D's
  scores are float32, so everything downstream — the loss reductions, the CO statistics (per-patch
  gradient dot products, norms, the cosines δ and the selection), CTN's flow and warp — runs in
  float32 on float32 inputs. Inside the networks the normalisation statistics are float32 too
  (instance norm upcasts; Flax's LayerNorm reduces in float32) and attention's softmax runs on
  float32 logits. float16 is not offered: it would need loss scaling, bfloat16 does not.
* **matmul precision** (``highest`` | ``default``) — the ``precision`` of every convolution,
  dense layer and attention product inside the networks. ``highest`` makes float32 products
  float32-exact on every backend (on TPU the default is a single bfloat16 pass, on recent NVIDIA
  GPUs TF32), which parity needs; ``default`` lets the backend use its fastest algorithm. With
  bfloat16 operands the choice hardly matters (products of bfloat16 are exact in float32
  accumulation either way).

What the policy does *not* touch: the loss-side products that are always ``Precision.HIGHEST``
on float32 — the cross-similarity Gram matrices (:mod:`cptrans_jax.losses.similarity`), the CO
closed form and the vmap path's reductions (:mod:`cptrans_jax.losses.content_aware`; the vmap
path's per-patch D is float32/highest, :meth:`cptrans_jax.objectives.Networks.co_discriminate`),
ROMA's multiscale pooling, CTN's Gaussian blur (:func:`cptrans_jax.losses.temporal.ctn_flow`)
and the ViT's bilinear resize (``jax.image.resize`` defaults to highest). Those are statistics
whose ordering or cosine decides the result, and they cost little next to the networks.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Dtype = Any
Precision = jax.lax.Precision

# "float32" casts nothing (None: each layer computes in its inputs' and parameters' dtype —
# float32 in training, float64 in the float64 parity tests, which must stay float64 end to end).
COMPUTE_DTYPES: dict[str, Dtype] = {"float32": None, "bfloat16": jnp.bfloat16}
MATMUL_PRECISIONS: dict[str, Precision] = {
    "highest": Precision.HIGHEST,
    "default": Precision.DEFAULT,
}
# The networks' defaults (and the config's): float32-exact everywhere.
DEFAULT_DTYPE: Dtype = None
DEFAULT_PRECISION: Precision = Precision.HIGHEST


def compute_dtype(name: str) -> Dtype:
    """``"float32"`` / ``"bfloat16"`` → the jnp dtype; anything else is a ``ValueError``."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be one of {tuple(COMPUTE_DTYPES)}, got {name!r}")
    return COMPUTE_DTYPES[name]


def matmul_precision(name: str) -> Precision:
    """``"highest"`` / ``"default"`` → the ``jax.lax.Precision``; else a ``ValueError``."""
    if name not in MATMUL_PRECISIONS:
        raise ValueError(
            f"matmul precision must be one of {tuple(MATMUL_PRECISIONS)}, got {name!r}"
        )
    return MATMUL_PRECISIONS[name]


def float32_at_least(x: jax.Array) -> jax.Array:
    """``x`` upcast to float32 if it is a narrower float (bfloat16), else unchanged: where
    statistics (means, variances, softmax) must not be accumulated in bfloat16."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))
