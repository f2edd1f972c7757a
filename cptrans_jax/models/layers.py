"""Fixed, parameter-free image operations shared by the networks (NHWC).

These reproduce the PyTorch originals exactly (SPEC §1, §9): reflect/zero padding, the
anti-aliased blur resampling of the CUT/CPTrans generator, and instance normalization without
affine parameters. They are written as plain array functions so XLA fuses them; none of them
holds state. They keep their input's dtype (bfloat16 under a bfloat16 compute policy,
:mod:`cptrans_jax.precision`); instance norm takes its statistics in float32 regardless.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from cptrans_jax.precision import float32_at_least


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
    """Reflect-pads the two spatial axes of an NHWC array (PyTorch ``ReflectionPad2d``)."""
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def instance_norm(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Instance norm without affine parameters or running statistics.

    Two-pass biased variance over H×W per sample and channel, like ``nn.InstanceNorm2d``.
    A bfloat16 input is normalised in float32 (statistics over H×W pixels must not depend on
    how a backend accumulates bfloat16, whose mantissa has 8 bits) and the result is cast back
    to bfloat16; a float32 input is unaffected.
    """
    xf = float32_at_least(x)
    mean = jnp.mean(xf, axis=(1, 2), keepdims=True)
    centred = xf - mean
    var = jnp.mean(jnp.square(centred), axis=(1, 2), keepdims=True)
    return (centred * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def _blur_down_axis(x: jax.Array, axis: int) -> jax.Array:
    # y[i] = (x[2i-1] + 2 x[2i] + x[2i+1]) / 4 with reflection at the borders; the output length
    # is that of a size-3, stride-2 convolution over the reflect-padded axis.
    n = x.shape[axis]
    if n < 2:
        raise ValueError(f"blur-down needs at least 2 pixels along axis {axis}, got {n}")
    n_out = (n - 1) // 2 + 1
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    xp = jnp.pad(x, pad, mode="reflect")

    def take(start: int) -> jax.Array:
        return jax.lax.slice_in_dim(xp, start, start + 2 * n_out - 1, stride=2, axis=axis)

    return (take(0) + 2.0 * take(1) + take(2)) * 0.25


def blur_downsample(x: jax.Array) -> jax.Array:
    """Anti-aliased ×2 downsampling: reflect-pad 1, separable [1,2,1]/4 filter, stride 2.

    Like the authors' ``Downsample`` it keeps rows and columns 0, 2, 4, …: on even sizes it is
    anchored at the top and left (only there is the reflection read), so it is not
    mirror-equivariant, and G's two blur-downs and blur-ups move content 1.5 px right and down
    and weight the first columns more than the last (``tests/test_layers.py``) — the source of
    the band a trained G shows at its left edge. Kept so for parity with their code.
    """
    return _blur_down_axis(_blur_down_axis(x, 1), 2)


def _blur_up_axis(x: jax.Array, axis: int) -> jax.Array:
    # y[2i] = 0.75 x[i] + 0.25 x[i-1], y[2i+1] = 0.75 x[i] + 0.25 x[i+1], edges replicated.
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    xp = jnp.pad(x, pad, mode="edge")
    prev = jax.lax.slice_in_dim(xp, 0, n, axis=axis)
    nxt = jax.lax.slice_in_dim(xp, 2, n + 2, axis=axis)
    even = 0.75 * x + 0.25 * prev
    odd = 0.75 * x + 0.25 * nxt
    inter = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * n
    return inter.reshape(shape)


def blur_upsample(x: jax.Array) -> jax.Array:
    """Anti-aliased ×2 upsampling: half-pixel bilinear with clamped edges, per spatial axis."""
    return _blur_up_axis(_blur_up_axis(x, 1), 2)


def im2col_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> jax.Array:
    """A stride-1 NHWC×HWIO convolution as one matmul over gathered patches (im2col).

    A drop-in for ``lax.conv_general_dilated`` in ``nn.Conv(conv_general_dilated=…)``, the same
    sum of products in another order. Why: XLA:CPU's convolution kernels, and above all the
    kernel-gradient convolution of the backward pass, run at a fraction of its matmul rate,
    while the (H·W, k²·C_in)×(k²·C_in, C_out) matmul here runs near it (see BENCHMARKS.md);
    the price is the patch matrix, k² times the input, kept for the backward pass. On GPUs and
    TPUs the native convolution is faster: ``train.conv_impl`` picks this only on CPU.
    Anything but stride 1, no dilation, one group and NHWC/HWIO is passed to the native op.
    """
    native = functools.partial(
        jax.lax.conv_general_dilated,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    ones = (None, (1, 1), [1, 1])
    simple = (
        lhs.ndim == 4
        and tuple(window_strides) == (1, 1)
        and (lhs_dilation in ones or tuple(lhs_dilation) == (1, 1))
        and (rhs_dilation in ones or tuple(rhs_dilation) == (1, 1))
        and feature_group_count == 1
        and batch_group_count == 1
        and not isinstance(padding, str)
        and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
    )
    if not simple:
        return native(lhs, rhs)
    kh, kw, c_in, c_out = rhs.shape
    (top, bottom), (left, right) = padding
    x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    h_out, w_out = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    # Channel order (i, j, c) matches rhs.reshape(kh·kw·c_in, c_out) of an HWIO kernel.
    patches = jnp.concatenate(
        [x[:, i : i + h_out, j : j + w_out, :] for i in range(kh) for j in range(kw)], axis=-1
    )
    return jnp.einsum(
        "nhwk,ko->nhwo",
        patches,
        rhs.reshape(kh * kw * c_in, c_out),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
