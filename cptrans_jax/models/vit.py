"""The frozen feature ViT used by the structural losses and the discriminator (SPEC §2).

Parameter names follow Google's augreg checkpoints (``embedding``, ``cls``,
``Transformer/posembed_input/pos_embedding``, ``Transformer/encoderblock_{i}/...``,
``Transformer/encoder_norm``), so an augreg ``.npz`` loads by name. Only the blocks that are
asked for are ever run; the module creates parameters for blocks ``0..depth-1``.

Outputs are the patch tokens (CLS dropped) after the requested blocks, each passed through the
model's *final* encoder LayerNorm, row-major over the patch grid.

``FeatureViT.dtype`` is the computation dtype and ``precision`` the matmul precision of the patch
embedding, every dense layer and both attention products (:mod:`cptrans_jax.precision`).
Parameters are float32 whatever they are. Under bfloat16 the LayerNorm statistics are float32
(Flax reduces in float32), attention's softmax runs on float32 logits, and the final encoder
norm computes and returns float32: the tokens the losses and D read are float32.
"""

from __future__ import annotations

import dataclasses
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

# The three token layers the losses use (0-based block indices).
FEATURE_LAYERS = (1, 3, 5)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Size of a feature ViT. ``depth`` is how many blocks get parameters (and can be run)."""

    image_size: int = 384
    patch_size: int = 16
    width: int = 768
    depth: int = 6
    num_heads: int = 12
    mlp_dim: int = 3072
    layer_norm_eps: float = 1e-6
    local_window: int = 7  # ROMA's local token window (7×7 on the 24×24 grid)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViT image_size {self.image_size} is not a multiple of patch_size "
                f"{self.patch_size}"
            )
        if self.width % self.num_heads:
            raise ValueError(f"ViT width {self.width} not divisible by num_heads {self.num_heads}")

    @property
    def grid(self) -> int:
        """Patches per side (24 for ViT-B/16 at 384)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid


def vit_b16_384(depth: int = 6) -> ViTConfig:
    """ViT-B/16 at 384×384 (the paper's feature network); blocks 0–5 are all it runs."""
    return ViTConfig(image_size=384, patch_size=16, width=768, depth=depth, num_heads=12)


class _Attention(nn.Module):
    num_heads: int
    dtype: Dtype = DEFAULT_DTYPE
    precision: Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        head_dim = width // self.num_heads
        dense = functools.partial(
            nn.DenseGeneral, dtype=self.dtype, param_dtype=jnp.float32, precision=self.precision
        )

        def proj(name: str) -> jax.Array:
            return dense((self.num_heads, head_dim), name=name)(x)

        q, k, v = proj("query"), proj("key"), proj("value")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * (head_dim**-0.5), k, precision=self.precision)
        # Softmax on float32 logits (exp of bfloat16 logits would round the weights coarsely).
        attn = jax.nn.softmax(float32_at_least(logits), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, v, precision=self.precision)
        return dense(width, axis=(-2, -1), name="out")(out)


class _MlpBlock(nn.Module):
    mlp_dim: int
    dtype: Dtype = DEFAULT_DTYPE
    precision: Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = functools.partial(
            nn.Dense, dtype=self.dtype, param_dtype=jnp.float32, precision=self.precision
        )
        h = dense(self.mlp_dim, name="Dense_0")(x)
        h = nn.gelu(h, approximate=False)  # exact erf GELU, as in the checkpoints (SPEC §9)
        return dense(x.shape[-1], name="Dense_1")(h)


class _EncoderBlock(nn.Module):
    num_heads: int
    mlp_dim: int
    eps: float
    dtype: Dtype = DEFAULT_DTYPE
    precision: Precision = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        # LayerNorm reduces in float32 and returns the compute dtype.
        norm = functools.partial(
            nn.LayerNorm, epsilon=self.eps, dtype=self.dtype, param_dtype=jnp.float32
        )
        x = x + _Attention(
            self.num_heads, self.dtype, self.precision, name="MultiHeadDotProductAttention_1"
        )(norm(name="LayerNorm_0")(x))
        return x + _MlpBlock(self.mlp_dim, self.dtype, self.precision, name="MlpBlock_3")(
            norm(name="LayerNorm_2")(x)
        )


def local_window_starts(centers: jax.Array, grid: int, window: int = 7) -> jax.Array:
    """Top-left (row, col) of the ``window``² token window around each flat centre id.

    Windows are shifted inside the border, never truncated (SPEC §2).
    """
    if window > grid:
        raise ValueError(f"local window {window} is larger than the {grid}×{grid} token grid")
    rows, cols = centers // grid, centers % grid
    half = window // 2
    r0 = jnp.clip(rows - half, 0, grid - window)
    c0 = jnp.clip(cols - half, 0, grid - window)
    return jnp.stack([r0, c0], axis=-1)


def local_window_indices(centers: jax.Array, grid: int, window: int = 7) -> jax.Array:
    """Flat patch ids (K, window²) of each centre's window, row-major inside the window."""
    starts = local_window_starts(centers, grid, window)
    offs = np.arange(window)
    r = starts[:, 0, None, None] + offs[None, :, None]
    c = starts[:, 1, None, None] + offs[None, None, :]
    return (r * grid + c).reshape(centers.shape[0], window * window)


class FeatureViT(nn.Module):
    """ViT feature extractor; see the module docstring for what it returns (float32 tokens)."""

    config: ViTConfig
    dtype: Dtype = DEFAULT_DTYPE
    precision: Precision = DEFAULT_PRECISION

    def setup(self) -> None:
        cfg = self.config
        self.embedding = nn.Conv(
            cfg.width,
            (cfg.patch_size, cfg.patch_size),
            strides=(cfg.patch_size, cfg.patch_size),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=jnp.float32,
            precision=self.precision,
            name="embedding",
        )
        self.cls = self.param("cls", nn.initializers.zeros, (1, 1, cfg.width))
        self.transformer = _Transformer(cfg, self.dtype, self.precision, name="Transformer")

    def resize(self, frames: jax.Array) -> jax.Array:
        """Bilinear half-pixel resize of NHWC frames to the ViT input size (no antialiasing,
        like PyTorch ``interpolate(..., mode='bilinear', align_corners=False)``)."""
        size = self.config.image_size
        if frames.shape[1] == size and frames.shape[2] == size:
            return frames
        b, _, _, c = frames.shape
        return jax.image.resize(frames, (b, size, size, c), method="bilinear", antialias=False)

    def embed(self, frames: jax.Array) -> jax.Array:
        """Patch embedding of resized frames: (B, N, width), no CLS, no position embedding.

        The resize runs on the float32 frames; the embedding conv casts to the compute dtype.
        """
        x = self.embedding(self.resize(frames))
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def __call__(self, frames: jax.Array, layers: Sequence[int] = FEATURE_LAYERS) -> list:
        """Normed patch tokens after each block in ``layers``: a list of (B, N, width)."""
        x = self.embed(frames)
        cls = jnp.broadcast_to(self.cls, (x.shape[0], 1, x.shape[-1])).astype(x.dtype)
        pos = self.transformer.pos_embedding().astype(x.dtype)  # a float32 param: no promotion
        x = jnp.concatenate([cls, x], axis=1) + pos
        # The CLS token is dropped before the final norm (SPEC §9).
        return [t[:, 1:] for t in self.transformer(x, layers)]

    def local_tokens(
        self, frames: jax.Array, centers: jax.Array, layers: Sequence[int] = FEATURE_LAYERS
    ) -> list:
        """Tokens of the local windows around ``centers`` (ROMA): a list of (B, K, window², C).

        Each window's patch embeddings (with their position embeddings, no CLS) run through the
        blocks as a sequence of its own.
        """
        x = self.embed(frames)
        x = x + self.transformer.pos_embedding()[:, 1:].astype(x.dtype)
        idx = local_window_indices(centers, self.config.grid, self.config.local_window)
        b, k, t = x.shape[0], idx.shape[0], idx.shape[1]
        windows = x[:, idx.reshape(-1)].reshape(b * k, t, x.shape[-1])
        return [o.reshape(b, k, t, -1) for o in self.transformer(windows, layers)]


class _Transformer(nn.Module):
    config: ViTConfig
    dtype: Dtype = DEFAULT_DTYPE
    precision: Precision = DEFAULT_PRECISION

    def setup(self) -> None:
        cfg = self.config
        self.posembed_input = _PosEmbed(cfg.num_patches + 1, cfg.width, name="posembed_input")
        self.blocks = [
            _EncoderBlock(
                cfg.num_heads,
                cfg.mlp_dim,
                cfg.layer_norm_eps,
                self.dtype,
                self.precision,
                name=f"encoderblock_{i}",
            )
            for i in range(cfg.depth)
        ]
        # At least float32 in and out whatever the compute dtype (its input is upcast, see
        # __call__): its outputs are the tokens the losses, CO and D read.
        self.encoder_norm = nn.LayerNorm(
            epsilon=cfg.layer_norm_eps,
            dtype=None,
            param_dtype=jnp.float32,
            name="encoder_norm",
        )

    def pos_embedding(self) -> jax.Array:
        return self.posembed_input()

    def __call__(self, x: jax.Array, layers: Sequence[int]) -> list:
        layers = tuple(layers)
        if not layers or min(layers) < 0 or max(layers) >= self.config.depth:
            raise ValueError(
                f"ViT layers {layers} must be within 0..{self.config.depth - 1} (depth)"
            )
        outs = {}
        for i in range(max(layers) + 1):
            x = self.blocks[i](x)
            if i in layers:
                outs[i] = self.encoder_norm(float32_at_least(x))
        return [outs[i] for i in layers]


class _PosEmbed(nn.Module):
    length: int
    width: int

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param(
            "pos_embedding", nn.initializers.normal(0.02), (1, self.length, self.width)
        )
