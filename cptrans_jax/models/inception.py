"""The FID Inception-v3 (SPEC §7): the network whose pool features FID and KID compare.

This is *not* torchvision's ImageNet Inception-v3 but the variant of the TensorFlow FID graph
(``pool_3`` of ``inception-2015-12-05``) that pytorch-fid ports as ``fid_inception_v3``. FID
numbers are only comparable with the papers' when computed with exactly this network, so the
differences from torchvision's are kept:

* ``Mixed_5b/5c/5d`` (FIDInceptionA), ``Mixed_6b..6e`` (FIDInceptionC) and ``Mixed_7b``
  (FIDInceptionE_1) average-pool their pool branch with ``count_include_pad=False`` (TF's
  ``SAME`` average pooling ignores the padding);
* ``Mixed_7c`` (FIDInceptionE_2) max-pools its pool branch instead (a bug in the TF graph that
  became part of the FID definition);
* the classifier has 1008 classes; it is never run here (FID uses the pool features only).

Every convolution is followed by inference-mode BatchNorm (eps 1e-3, running statistics) and a
ReLU, as in ``BasicConv2d``. Layout is NHWC.

Input preprocessing matches pytorch-fid's ``InceptionV3(resize_input=True,
normalize_input=True)``: images in [0, 1] (uint8 images are divided by 255 first, like
``ToTensor``), resized to 299×299 by bilinear interpolation with half-pixel centres and *no*
antialiasing (``F.interpolate(mode="bilinear", align_corners=False)``; ``jax.image.resize``
would antialias on downscaling and give different features), then mapped to [-1, 1].

Output: the 2048-d ``pool3`` features, the global average over the 8×8 map after ``Mixed_7c``.

Convolutions and the resize run at ``Precision.HIGHEST`` by default: on GPUs the default f32
precision may use TF32, and FID should not depend on which accelerator computed it.

Weights: :func:`cptrans_jax.inception_weights.load_inception_params` reads pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``; the submodule names here are its key names.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

INCEPTION_SIZE = 299
FEATURE_DIM = 2048

PrecisionLike = lax.Precision | str | None

__all__ = [
    "FEATURE_DIM",
    "INCEPTION_SIZE",
    "FIDInceptionV3",
    "bilinear_resize",
    "inception_features",
    "preprocess",
]


def _interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of 1-D linear interpolation, exactly as PyTorch's bilinear kernel.

    PyTorch (``align_corners=False``, no scale factor given) maps output index ``d`` to source
    coordinate ``s = (d + 0.5) · in/out − 0.5`` in float32, clamps ``s < 0`` to 0, and blends
    ``floor(s)`` and ``floor(s) + 1`` (the latter clamped to the last row). Its CPU kernel
    evaluates ``s`` as one fused multiply-add (a single float32 rounding), emulated here in
    float64; two roundings would move some blend weights by ~1e-5 at large ``in``. A dense
    matrix keeps this exact and lets XLA run the resize as two small matmuls.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    centres = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    src = (np.float64(scale) * centres.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = (src - i0.astype(np.float32)).astype(np.float32)
    m = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), np.float32(1.0) - lam)
    np.add.at(m, (rows, i1), lam)
    return m


def bilinear_resize(
    images: jax.Array, size: tuple[int, int], precision: PrecisionLike = lax.Precision.HIGHEST
) -> jax.Array:
    """Resize NHWC ``images`` to ``size`` = (H, W) like ``F.interpolate(bilinear,
    align_corners=False)``: half-pixel centres, no antialiasing."""
    _, h, w, _ = images.shape
    out_h, out_w = size
    x = images
    # Same size: PyTorch's source coordinates are then the pixel centres themselves (identity).
    if h != out_h:
        x = jnp.einsum("oh,bhwc->bowc", _interpolation_matrix(h, out_h), x, precision=precision)
    if w != out_w:
        x = jnp.einsum("pw,bhwc->bhpc", _interpolation_matrix(w, out_w), x, precision=precision)
    return x


def preprocess(images: jax.Array, precision: PrecisionLike = lax.Precision.HIGHEST) -> jax.Array:
    """uint8 [0, 255] or float [0, 1] NHWC RGB → float32 299×299 in [-1, 1] (pytorch-fid's)."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected NHWC RGB images (B, H, W, 3), got shape {images.shape}")
    if images.dtype == jnp.uint8:
        x = images.astype(jnp.float32) / 255.0
    else:
        x = images.astype(jnp.float32)
    x = bilinear_resize(x, (INCEPTION_SIZE, INCEPTION_SIZE), precision)
    return 2.0 * x - 1.0


class BasicConv2d(nn.Module):
    """Conv (no bias) → BatchNorm (inference, eps 1e-3) → ReLU; torch's padding is symmetric."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    precision: PrecisionLike = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = self.padding
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            precision=self.precision,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
    # count_include_pad=False: border outputs average only the real pixels, as TF's SAME pooling.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_valid_s2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Block(nn.Module):
    """Base of the mixed blocks: ``conv(name, features, kernel, ...)`` builds a named
    :class:`BasicConv2d` sharing the block's precision."""

    precision: PrecisionLike = lax.Precision.HIGHEST

    def conv(
        self,
        name: str,
        features: int,
        kernel: tuple[int, int],
        strides: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
    ) -> BasicConv2d:
        return BasicConv2d(features, kernel, strides, padding, self.precision, name=name)


class FIDInceptionA(_Block):
    """Mixed_5b/5c/5d (35×35): 1×1, 5×5, double 3×3 and avg-pool branches."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.conv("branch1x1", 64, (1, 1))(x)
        b5 = self.conv("branch5x5_1", 48, (1, 1))(x)
        b5 = self.conv("branch5x5_2", 64, (5, 5), padding=(2, 2))(b5)
        b3 = self.conv("branch3x3dbl_1", 64, (1, 1))(x)
        b3 = self.conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(b3)
        b3 = self.conv("branch3x3dbl_3", 96, (3, 3), padding=(1, 1))(b3)
        bp = self.conv("branch_pool", self.pool_features, (1, 1))(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    """Mixed_6a (35×35 → 17×17): the grid reduction, unchanged from torchvision."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.conv("branch3x3", 384, (3, 3), strides=(2, 2))(x)
        bd = self.conv("branch3x3dbl_1", 64, (1, 1))(x)
        bd = self.conv("branch3x3dbl_2", 96, (3, 3), padding=(1, 1))(bd)
        bd = self.conv("branch3x3dbl_3", 96, (3, 3), strides=(2, 2))(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_valid_s2(x)], axis=-1)


class FIDInceptionC(_Block):
    """Mixed_6b..6e (17×17): factorised 7×7 branches (1×7 / 7×1) and avg-pool branch."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = self.conv("branch1x1", 192, (1, 1))(x)
        b7 = self.conv("branch7x7_1", c7, (1, 1))(x)
        b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
        bd = self.conv("branch7x7dbl_1", c7, (1, 1))(x)
        bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
        bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
        bp = self.conv("branch_pool", 192, (1, 1))(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    """Mixed_7a (17×17 → 8×8): the second grid reduction, unchanged from torchvision."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.conv("branch3x3_1", 192, (1, 1))(x)
        b3 = self.conv("branch3x3_2", 320, (3, 3), strides=(2, 2))(b3)
        b7 = self.conv("branch7x7x3_1", 192, (1, 1))(x)
        b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
        b7 = self.conv("branch7x7x3_4", 192, (3, 3), strides=(2, 2))(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_valid_s2(x)], axis=-1)


class FIDInceptionE(_Block):
    """Mixed_7b (``max_pool=False``, FIDInceptionE_1) and Mixed_7c (``max_pool=True``,
    FIDInceptionE_2): the pool branch is the only difference between them."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = self.conv("branch1x1", 320, (1, 1))(x)
        b3 = self.conv("branch3x3_1", 384, (1, 1))(x)
        b3 = jnp.concatenate(
            [
                self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
                self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3),
            ],
            axis=-1,
        )
        bd = self.conv("branch3x3dbl_1", 448, (1, 1))(x)
        bd = self.conv("branch3x3dbl_2", 384, (3, 3), padding=(1, 1))(bd)
        bd = jnp.concatenate(
            [
                self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
                self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd),
            ],
            axis=-1,
        )
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3_same(x)
        bp = self.conv("branch_pool", 192, (1, 1))(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """Images (B, H, W, 3), uint8 or float in [0, 1] → pool3 features (B, 2048) float32.

    Variables: ``{"params": ..., "batch_stats": ...}`` (BatchNorm running statistics), e.g. from
    :func:`cptrans_jax.inception_weights.load_inception_params`.
    """

    precision: PrecisionLike = lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        p = self.precision
        x = preprocess(images, p)

        def conv(name: str, *args: Sequence[int] | int) -> BasicConv2d:
            return BasicConv2d(*args, precision=p, name=name)

        x = conv("Conv2d_1a_3x3", 32, (3, 3), (2, 2))(x)  # 149×149
        x = conv("Conv2d_2a_3x3", 32, (3, 3))(x)  # 147×147
        x = conv("Conv2d_2b_3x3", 64, (3, 3), (1, 1), (1, 1))(x)
        x = _max_pool_3x3_valid_s2(x)  # 73×73
        x = conv("Conv2d_3b_1x1", 80, (1, 1))(x)
        x = conv("Conv2d_4a_3x3", 192, (3, 3))(x)  # 71×71
        x = _max_pool_3x3_valid_s2(x)  # 35×35
        x = FIDInceptionA(p, pool_features=32, name="Mixed_5b")(x)
        x = FIDInceptionA(p, pool_features=64, name="Mixed_5c")(x)
        x = FIDInceptionA(p, pool_features=64, name="Mixed_5d")(x)
        x = InceptionB(p, name="Mixed_6a")(x)  # 17×17
        for name, c7 in (
            ("Mixed_6b", 128),
            ("Mixed_6c", 160),
            ("Mixed_6d", 160),
            ("Mixed_6e", 192),
        ):
            x = FIDInceptionC(p, channels_7x7=c7, name=name)(x)
        x = InceptionD(p, name="Mixed_7a")(x)  # 8×8
        x = FIDInceptionE(p, max_pool=False, name="Mixed_7b")(x)
        x = FIDInceptionE(p, max_pool=True, name="Mixed_7c")(x)
        # pool3: adaptive average pool to 1×1 = the mean over the spatial map.
        return jnp.mean(x, axis=(1, 2))


@jax.jit
def inception_features(variables: dict, images: jax.Array) -> jax.Array:
    """Jitted :class:`FIDInceptionV3` forward: one compiled program per input shape and dtype,
    shared by every caller in the process (the evaluation loop and the tests)."""
    return FIDInceptionV3().apply(variables, images)
