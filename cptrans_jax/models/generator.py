"""The CPTrans/ROMA generator: ResNet-9blocks with anti-aliased resampling (SPEC §1).

Submodule names carry the index of the PyTorch ``nn.Sequential`` they mirror (``model_1`` is
``model.1``), so the converter in :mod:`cptrans_jax.convert` is a rename plus a transpose.
Inputs and outputs are NHWC frames in [-1, 1].

``dtype`` is the computation dtype and ``precision`` the convolutions' matmul precision
(:mod:`cptrans_jax.precision`); parameters are float32 whatever they are — the parameter tree is
the same — and the output frames are float32.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cptrans_jax.models.layers import (
    blur_downsample,
    blur_upsample,
    im2col_conv,
    instance_norm,
    reflect_pad,
)
from cptrans_jax.precision import (
    DEFAULT_DTYPE,
    DEFAULT_PRECISION,
    Dtype,
    Precision,
    float32_at_least,
)

# How G's convolutions are computed; the same parameters and the same math either way.
CONV_IMPLS = ("lax", "im2col")


def conv_impl_for(choice: str, platform: str | None) -> str:
    """A ``conv_impl`` choice ("auto" or one of ``CONV_IMPLS``) resolved for the devices'
    platform ("cpu", "gpu", "tpu"): "auto" is im2col on CPUs, the native op elsewhere."""
    if choice != "auto":
        return choice
    return "im2col" if platform == "cpu" else "lax"


def xavier_normal(gain: float) -> nn.initializers.Initializer:
    """``torch.nn.init.xavier_normal_(w, gain)``: N(0, gain² · 2 / (fan_in + fan_out))."""
    return nn.initializers.variance_scaling(gain**2, mode="fan_avg", distribution="normal")


def _conv(
    features: int,
    kernel: int,
    name: str,
    init_gain: float,
    dtype: Dtype,
    precision: Precision,
    zero_pad: int = 0,
    impl: str = "lax",
) -> nn.Conv:
    """A k×k stride-1 convolution with bias; ``zero_pad`` pixels of zero padding.

    float32 parameters, computed in ``dtype`` at ``precision`` (set here, per layer, so the
    policy holds wherever G runs: the training step, sampling, ``translate``).
    ``impl="im2col"`` computes the 3×3 convolutions as one matmul over gathered patches
    (:func:`~cptrans_jax.models.layers.im2col_conv`, faster on XLA:CPU); the two 7×7 ones stay
    native (their patch matrix is 49× the input, and the last has 3 output channels — a matmul
    too thin to gain).
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")
    return nn.Conv(
        features,
        (kernel, kernel),
        padding=[(zero_pad, zero_pad)] * 2,
        use_bias=True,
        kernel_init=xavier_normal(init_gain),
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        param_dtype=jnp.float32,
        precision=precision,
        name=name,
        conv_general_dilated=im2col_conv if impl == "im2col" and kernel == 3 else None,
    )


class ResnetBlock(nn.Module):
    """y = x + IN(conv3(reflpad1(ReLU(IN(conv3(reflpad1(x))))))): no ReLU after the add."""

    features: int
    init_gain: float = 0.02
    dtype: Dtype = DEFAULT_DTYPE
    precision: Precision = DEFAULT_PRECISION
    conv_impl: str = "lax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(
            _conv,
            init_gain=self.init_gain,
            dtype=self.dtype,
            precision=self.precision,
            impl=self.conv_impl,
        )
        h = conv(self.features, 3, "conv_block_1")(reflect_pad(x, 1))
        h = nn.relu(instance_norm(h))
        h = conv(self.features, 3, "conv_block_5")(reflect_pad(h, 1))
        return x + instance_norm(h)


class Generator(nn.Module):
    """ResNet generator with blur down/upsampling; ``ngf=64, n_blocks=9`` is the paper's G.

    Spatial sizes must be multiples of 4 (two ×2 downsamplings, then two ×2 upsamplings).
    ``dtype``/``precision``: see the module docstring; the output is float32 either way.
    ``conv_impl`` ("lax" | "im2col") chooses how the convolutions are computed, not what:
    the parameters and the function are the same (see :func:`_conv`).
    """

    ngf: int = 64
    n_blocks: int = 9
    out_channels: int = 3
    init_gain: float = 0.02
    dtype: Dtype = DEFAULT_DTYPE
    precision: Precision = DEFAULT_PRECISION
    conv_impl: str = "lax"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"Generator expects NHWC frames, got shape {x.shape}")
        h_in, w_in = x.shape[1], x.shape[2]
        if h_in % 4 or w_in % 4:
            raise ValueError(
                f"Generator needs frame height and width divisible by 4, got {h_in}×{w_in}"
            )
        g = self.init_gain
        conv = functools.partial(
            _conv, init_gain=g, dtype=self.dtype, precision=self.precision, impl=self.conv_impl
        )
        # The first conv casts the float32 frames to the compute dtype.
        h = conv(self.ngf, 7, "model_1")(reflect_pad(x, 3))
        h = nn.relu(instance_norm(h))
        h = conv(self.ngf * 2, 3, "model_4", zero_pad=1)(h)
        h = blur_downsample(nn.relu(instance_norm(h)))
        h = conv(self.ngf * 4, 3, "model_8", zero_pad=1)(h)
        h = blur_downsample(nn.relu(instance_norm(h)))
        for i in range(self.n_blocks):
            h = ResnetBlock(
                self.ngf * 4,
                init_gain=g,
                dtype=self.dtype,
                precision=self.precision,
                conv_impl=self.conv_impl,
                name=f"model_{12 + i}",
            )(h)
        up = 12 + self.n_blocks  # 21 for the paper's 9 blocks
        h = conv(self.ngf * 2, 3, f"model_{up + 1}", zero_pad=1)(blur_upsample(h))
        h = nn.relu(instance_norm(h))
        h = conv(self.ngf, 3, f"model_{up + 5}", zero_pad=1)(blur_upsample(h))
        h = nn.relu(instance_norm(h))
        h = conv(self.out_channels, 7, f"model_{up + 9}")(reflect_pad(h, 3))
        # tanh on float32: the frames that enter the losses (and CTN's warp) are float32.
        return jnp.tanh(float32_at_least(h))


def generator_conv_indices(n_blocks: int = 9) -> dict[str, int]:
    """Flax submodule name → PyTorch ``nn.Sequential`` index for the non-residual convs."""
    up = 12 + n_blocks
    return {
        "model_1": 1,
        "model_4": 4,
        "model_8": 8,
        f"model_{up + 1}": up + 1,
        f"model_{up + 5}": up + 5,
        f"model_{up + 9}": up + 9,
    }
