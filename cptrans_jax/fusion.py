"""Fusion of an infrared frame with its visible translation (the papers' fusion figures).

Every method fuses *luminance* and keeps the visible frame's colour: in JPEG's full-range
YCbCr (ITU-R BT.601 weights, ``Y = 0.299 R + 0.587 G + 0.114 B``) the visible frame's Cb and
Cr are kept and its Y is replaced by a fused Y. Since the inverse transform adds Y to every
channel with weight 1 (``R = Y + 1.402 (Cr − 128)`` etc.), that is exactly

    fused RGB = visible RGB + (Y_fused − Y_visible)   (per channel), rounded and clipped to 0..255,

which is what is computed (no colour-space round trip, so no round-trip error). The infrared's
luminance Y_ir is the same weighted sum of its channels; for a gray frame (R = G = B) it is the
gray value itself.

Methods (``METHODS``):

* ``ycbcr-max``: Y_fused = max(Y_ir, Y_visible) — warm objects keep their infrared brightness.
* ``ycbcr-weighted``: Y_fused = w · Y_ir + (1 − w) · Y_visible, ``w`` = ``ir_weight``
  (default 0.5).
* ``laplacian``: Laplacian-pyramid fusion of the two luminances (Burt & Adelson): both are
  decomposed into ``levels`` band-pass levels and a low-pass base (5-tap binomial filter
  [1 4 6 4 1] / 16, reflect borders, factor-2 steps; the pyramid stops early where the next
  level would be under 4 pixels); each band-pass coefficient is taken from the image whose
  coefficient is larger in magnitude (the infrared's on ties), the bases are averaged, and the
  pyramid is collapsed. Edges and texture come from whichever frame has more of them at that
  scale.

Properties the tests check: fusing a frame with itself returns it (every method); a black
visible frame fused by ``ycbcr-max`` returns the infrared's luminance as a gray frame, and by
``ycbcr-weighted`` w · Y_ir; two constant frames fused by ``laplacian`` give the visible colour
shifted to the mean of the two luminances.

:func:`fuse_frames` is the jnp function (uint8 (..., H, W, 3) in, uint8 out) and jits; both
frames must have one size (``fuse`` reconciles sizes first). :func:`make_fuse_fn` jits it for a
batch split over the local devices; :func:`make_translate_fuse_fn` runs G and the fusion in one
jitted call, so ``translate --fuse`` fuses on the device right after G.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from cptrans_jax.sharding import batch_sharding, replicated

METHODS = ("ycbcr-max", "ycbcr-weighted", "laplacian")
DEFAULT_LEVELS = 4
MIN_LEVEL_SIDE = 4  # the pyramid stops before a level would be smaller than this

# JPEG / BT.601 luma weights.
_LUMA = (0.299, 0.587, 0.114)
# The binomial 5-tap filter of Burt & Adelson's pyramid.
_TAPS = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """How to fuse: the method and its parameters (hashable, so jitted functions cache on it)."""

    method: str = "ycbcr-max"
    ir_weight: float = 0.5  # ycbcr-weighted
    levels: int = DEFAULT_LEVELS  # laplacian

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"unknown fusion method {self.method!r}; expected one of {', '.join(METHODS)}"
            )
        if not 0.0 <= self.ir_weight <= 1.0:
            raise ValueError(f"the infrared weight must be in [0, 1], got {self.ir_weight}")
        if self.levels < 1:
            raise ValueError(f"the pyramid needs at least 1 level, got {self.levels}")


def luminance(rgb: jax.Array) -> jax.Array:
    """Y of JPEG's YCbCr, float (..., H, W) from (..., H, W, 3) in 0..255."""
    return rgb[..., 0] * _LUMA[0] + rgb[..., 1] * _LUMA[1] + rgb[..., 2] * _LUMA[2]


# ------------------------------------------------------------------------- Laplacian pyramid


def _blur_axis(x: jax.Array, axis: int) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (2, 2)
    xp = jnp.pad(x, pad, mode="reflect")
    n = x.shape[axis]
    return sum(tap * jax.lax.slice_in_dim(xp, k, k + n, axis=axis) for k, tap in enumerate(_TAPS))


def _blur(x: jax.Array) -> jax.Array:
    """The separable 5-tap binomial blur over the last two axes (H, W)."""
    return _blur_axis(_blur_axis(x, x.ndim - 2), x.ndim - 1)


def _down(x: jax.Array) -> jax.Array:
    return _blur(x)[..., ::2, ::2]


def _up(x: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Zero insertion then the blur with gain 4 (2 per axis), cropped to ``shape`` (H, W)."""
    h, w = x.shape[-2:]
    z = jnp.zeros((*x.shape[:-2], 2 * h, 2 * w), x.dtype).at[..., ::2, ::2].set(x)
    return (4.0 * _blur(z))[..., : shape[0], : shape[1]]


def pyramid_levels(height: int, width: int, levels: int) -> int:
    """How many band-pass levels fit: each halves the size; the base stays >= 4 pixels."""
    n, h, w = 0, height, width
    while n < levels and min(-(-h // 2), -(-w // 2)) >= MIN_LEVEL_SIDE:
        h, w, n = -(-h // 2), -(-w // 2), n + 1
    return n


def laplacian_pyramid(y: jax.Array, levels: int) -> list[jax.Array]:
    """[band-pass level 0 (finest), …, band-pass level n−1, low-pass base] of (..., H, W)."""
    n = pyramid_levels(y.shape[-2], y.shape[-1], levels)
    bands, g = [], y
    for _ in range(n):
        coarser = _down(g)
        bands.append(g - _up(coarser, g.shape[-2:]))
        g = coarser
    return [*bands, g]


def collapse_pyramid(pyramid: list[jax.Array]) -> jax.Array:
    """The inverse of :func:`laplacian_pyramid` (exact up to float rounding)."""
    g = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        g = band + _up(g, band.shape[-2:])
    return g


def laplacian_fuse(y_ir: jax.Array, y_vis: jax.Array, levels: int) -> jax.Array:
    """Max-magnitude band-pass coefficients, averaged bases (module docstring)."""
    p_ir, p_vis = laplacian_pyramid(y_ir, levels), laplacian_pyramid(y_vis, levels)
    pairs = zip(p_ir[:-1], p_vis[:-1], strict=True)
    bands = [jnp.where(jnp.abs(a) >= jnp.abs(b), a, b) for a, b in pairs]
    return collapse_pyramid([*bands, 0.5 * (p_ir[-1] + p_vis[-1])])


# ------------------------------------------------------------------------------------ fusion


def fuse_frames(
    infrared: jax.Array, visible: jax.Array, config: FusionConfig = FusionConfig()
) -> jax.Array:
    """Fuses uint8 (..., H, W, 3) frames of one size into uint8 (..., H, W, 3) (module doc)."""
    if infrared.shape != visible.shape:
        raise ValueError(
            f"infrared {infrared.shape} and visible {visible.shape} frames must have one shape"
        )
    ir = infrared.astype(jnp.float32)
    vis = visible.astype(jnp.float32)
    y_ir, y_vis = luminance(ir), luminance(vis)
    if config.method == "ycbcr-max":
        y = jnp.maximum(y_ir, y_vis)
    elif config.method == "ycbcr-weighted":
        y = config.ir_weight * y_ir + (1.0 - config.ir_weight) * y_vis
    else:
        y = laplacian_fuse(y_ir, y_vis, config.levels)
    # Keeping Cb and Cr while replacing Y adds the change of Y to every channel (module doc).
    out = vis + (y - y_vis)[..., None]
    return jnp.clip(jnp.round(out), 0.0, 255.0).astype(jnp.uint8)


@functools.lru_cache(maxsize=16)
def make_fuse_fn(config: FusionConfig, mesh: jax.sharding.Mesh) -> Callable:
    """``jit((uint8 (B, H, W, 3), uint8 (B, H, W, 3)) → uint8 (B, H, W, 3))``, the batch split
    over the mesh's ``data`` axis. Cached per (config, mesh): one compilation per frame size."""
    data = batch_sharding(mesh)
    return jax.jit(
        functools.partial(fuse_frames, config=config),
        in_shardings=(data, data),
        out_shardings=data,
    )


@functools.lru_cache(maxsize=8)
def make_translate_fuse_fn(
    translate_fn: Callable, config: FusionConfig, mesh: jax.sharding.Mesh
) -> Callable:
    """``jit((params, uint8 frames) → (translation, fusion))``, both uint8 (B, H, W, 3).

    ``translate_fn(params, frames) → uint8 translation`` is translate's inference function (G
    and SPEC §5's quantisation); the fusion takes the quantised translation, so it equals what
    ``fuse`` makes of translate's written frames.
    """
    rep, data = replicated(mesh), batch_sharding(mesh)

    def run(params: Any, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        translation = translate_fn(params, frames)
        return translation, fuse_frames(frames, translation, config)

    return jax.jit(run, in_shardings=(rep, data), out_shardings=(data, data))
