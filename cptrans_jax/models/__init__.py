"""Flax Linen networks (NHWC): generator, feature ViT, token-wise discriminator."""

from cptrans_jax.models.discriminator import (
    ROMA_SCALES,
    Discriminator,
    multiscale_pool_matrix,
    multiscale_tokens,
)
from cptrans_jax.models.generator import Generator
from cptrans_jax.models.vit import (
    FEATURE_LAYERS,
    FeatureViT,
    ViTConfig,
    local_window_indices,
    vit_b16_384,
)

__all__ = [
    "FEATURE_LAYERS",
    "ROMA_SCALES",
    "Discriminator",
    "FeatureViT",
    "Generator",
    "ViTConfig",
    "local_window_indices",
    "multiscale_pool_matrix",
    "multiscale_tokens",
    "vit_b16_384",
]
