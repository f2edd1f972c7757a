"""Content-aware temporal normalization, CTN (CPTrans §3.3, SPEC §4).

A random smooth flow F, whose magnitude follows the discriminator's content-aware weight map
w̃ (SPEC §4 "Content-aware optimization"), stands in for the motion between two frames:

    F = Smooth(Normalize(w̃) · γ · z),  z ~ N(0, I) of shape (H, W, 2)
    L_ctn = mean over pixels, channels and batch of (W(G(x), F) − G(W(x, F)))²

where W is a bilinear backward warp with clamped edges. G should commute with the synthetic
motion; content-rich regions (large w̃) get larger displacements. F is a constant: no gradient
flows into w̃ or z.

Conventions
-----------
* Images are NHWC; flows are (B, H, W, 2) in *pixels*, ``flow[..., 0]`` the horizontal (x,
  column) displacement and ``flow[..., 1]`` the vertical (y, row) one — the order of PyTorch's
  ``grid_sample`` grids.
* ``warp(img, F)(p) = img(p + F(p))``; samples outside the image take the nearest border value.
* The weight map is min–max normalized on its own (B, g, g) grid and *then* resized bilinearly
  (half-pixel centres) to H×W; see :func:`normalize_minmax` for why this order and for the
  constant-map case.

Defaults of γ and σ (SPEC §8: "RMS displacement 1–4 px at 256²")
-----------------------------------------------------------------
Measured with ``python benchmarks/ctn_flow_rms.py`` (CPU, float32, 256×256, 24×24 weight
map, 8 noise draws per row; "CO" = weight maps whose round(0.4·576) random content-rich patches
have w uniform in [λ_inc/e, λ_inc] = [0.74, 2] and w = 1 elsewhere; RMS in pixels; the last
column is the continuous-Gaussian estimate γ/(√(2π)·σ))::

     gamma  sigma   uniform   CO weights   γ/(√(2π)σ)
      19.0    4.0     2.02       0.72         1.89
      38.0    8.0     2.01       0.71         1.89     <- defaults
      76.0   16.0     1.95       0.69         1.89
      40.0    8.0     2.11       0.75         1.99
      20.0    8.0     1.06       0.38         1.00
      57.0    8.0     3.01       1.07         2.84
      76.0    8.0     4.02       1.43         3.79

(With ``--draws 32`` the defaults give 2.00 / 0.72.) Smoothing white noise with a unit-sum
Gaussian of std σ leaves a per-component std of ≈ γ/(2√π·σ), so the RMS displacement is
≈ γ/(√(2π)·σ); the measured figures are ~6 % higher because the kernel is truncated at radius
⌈2σ⌉ and renormalized, and slightly lower for σ = 16 where the blur's zero padding damps a
wider border band.

We pick σ = 8 px, a displacement field coherent over ~16–20 px (1.5–2 ViT patches of the
256² frame, 256/24 ≈ 10.7 px each), so the warp moves local structures rather than
jittering single pixels, and γ = 38, which gives RMS ≈ 2 px — the middle of SPEC's 1–4 px —
for the uniform ("w/o CO") map. With CO weights the frame-wide RMS is about a third of that
(≈ 0.7 px): min–max maps the ordinary patches (w = 1) to ≈ 0.2 and the content-rich ones
across [0, 1]. Note that content-rich patches with w < 1 (|δ| > ln λ_inc) end up *below* the
ordinary ones, a consequence of the paper's w = λ_inc/e^|δ| combined with min–max.
"""

from __future__ import annotations

import math

import dm_pix as pix
import jax
import jax.numpy as jnp

# See the module docstring for the measurement behind these two values.
DEFAULT_CTN_GAMMA: float = 38.0
DEFAULT_CTN_SIGMA: float = 8.0


def ctn_defaults_rationale() -> str:
    """How DEFAULT_CTN_GAMMA / DEFAULT_CTN_SIGMA were chosen (returns the module's note)."""
    doc = __doc__ or ""
    return doc[doc.index("Defaults of γ") :]


def blur_kernel_size(sigma: float) -> int:
    """Gaussian kernel size for ``sigma``: 4σ + 1 rounded up to an odd integer (radius ⌈2σ⌉)."""
    return 2 * math.ceil(2.0 * sigma) + 1


def normalize_minmax(w: jax.Array) -> jax.Array:
    """Per-image min–max normalization of a (B, h, w) weight map to [0, 1].

    A constant map (max == min, e.g. the "w/o CO" ablation whose weights are all 1) has no
    content to emphasise, so it maps to all ones — a uniform flow magnitude — instead of the
    0/0 of the formula. SPEC is silent here; ones (not zeros) keep CTN active in that ablation,
    which is its point.

    The check is exact equality, which is why :func:`ctn_flow` normalizes the map on its own
    grid before resizing: a bilinear resize of a constant map can be off by an ulp, and a
    min–max of that rounding noise would produce an arbitrary 0/1 pattern.
    """
    lo = jnp.min(w, axis=(1, 2), keepdims=True)
    hi = jnp.max(w, axis=(1, 2), keepdims=True)
    span = hi - lo
    flat = span <= 0
    safe = jnp.where(flat, 1.0, span)
    return jnp.where(flat, jnp.ones_like(w), (w - lo) / safe)


def ctn_noise(key: jax.Array, batch: int, height: int, width: int) -> jax.Array:
    """The noise z ~ N(0, I) of :func:`ctn_flow`, shape (batch, height, width, 2), float32."""
    return jax.random.normal(key, (batch, height, width, 2), jnp.float32)


def ctn_flow(
    weight_map: jax.Array,
    noise: jax.Array,
    gamma: float = DEFAULT_CTN_GAMMA,
    sigma: float = DEFAULT_CTN_SIGMA,
) -> jax.Array:
    """CTN flow F = Smooth(Normalize(w̃) · γ · z) in pixels, shape (B, H, W, 2).

    Args:
      weight_map: (B, g, g) CO weights w̃ of the fake patches (row-major patch grid).
      noise: z of shape (B, H, W, 2), standard normal; its H, W set the output size.
      gamma: the γ_stride scale (pixels per unit noise before smoothing).
      sigma: std of the Gaussian blur in pixels (kernel 4σ+1 rounded up to odd, zero 'SAME'
        padding, per channel); ``sigma <= 0`` skips the blur.

    Returns:
      The flow, ``flow[..., 0]`` = x (column), ``flow[..., 1]`` = y (row) displacement, under
      ``stop_gradient`` (F is a constant of the loss).
    """
    if weight_map.ndim != 3:
        raise ValueError(f"ctn_flow expects a (B, g, g) weight map, got shape {weight_map.shape}")
    if noise.ndim != 4 or noise.shape[-1] != 2 or noise.shape[0] != weight_map.shape[0]:
        raise ValueError(
            f"ctn_flow expects noise of shape (B={weight_map.shape[0]}, H, W, 2), got {noise.shape}"
        )
    b, h, w, _ = noise.shape
    weights = normalize_minmax(weight_map.astype(noise.dtype))
    # Half-pixel bilinear, no antialiasing: PyTorch interpolate(align_corners=False).
    weights = jax.image.resize(weights, (b, h, w), method="bilinear", antialias=False)
    flow = weights[..., None] * gamma * noise
    if sigma > 0:
        # dm-pix's depthwise convolutions take no precision argument: float32-exact here on
        # every backend (TPU's default would be one bfloat16 pass), whatever the networks'
        # matmul precision (cptrans_jax.precision).
        with jax.default_matmul_precision("highest"):
            flow = pix.gaussian_blur(
                flow, sigma, blur_kernel_size(sigma), padding="SAME", channel_axis=-1
            )
    return jax.lax.stop_gradient(flow)


def _warp_one(image: jax.Array, flow: jax.Array) -> jax.Array:
    """Backward-warp one (H, W, C) image by a (H, W, 2) pixel flow."""
    h, w = image.shape[:2]
    rows, cols = jnp.meshgrid(
        jnp.arange(h, dtype=flow.dtype), jnp.arange(w, dtype=flow.dtype), indexing="ij"
    )
    # flat_nd_linear_interpolate wants coordinates (ndim, ...) in the volume's axis order
    # (row, col); it clamps both corner indices, which replicates the border.
    coords = jnp.stack([rows + flow[..., 1], cols + flow[..., 0]])
    # Channels are mapped over the volume only: the indices and weights are computed once.
    return jax.vmap(
        lambda channel: pix.flat_nd_linear_interpolate(channel, coords),
        in_axes=-1,
        out_axes=-1,
    )(image)


def warp(images: jax.Array, flow: jax.Array) -> jax.Array:
    """Bilinear backward warp of NHWC ``images`` by a (B, H, W, 2) pixel ``flow``.

    ``output(p) = images(p + flow(p))`` with ``flow[..., 0]`` the x (column) and
    ``flow[..., 1]`` the y (row) displacement; edges are clamped (border replicate). Equals
    PyTorch ``grid_sample(mode='bilinear', padding_mode='border', align_corners=True)`` on the
    grid of normalized pixel coordinates p + flow.
    """
    if images.ndim != 4 or flow.shape != (*images.shape[:3], 2):
        raise ValueError(
            f"warp expects images (B, H, W, C) and flow (B, H, W, 2), got {images.shape} "
            f"and {flow.shape}"
        )
    return jax.vmap(_warp_one)(images, flow.astype(images.dtype))


def ctn_loss(warped_fake: jax.Array, fake_of_warped: jax.Array) -> jax.Array:
    """L_ctn = mean over batch, pixels and channels of (W(G(x), F) − G(W(x, F)))².

    Call as ``ctn_loss(warp(G(x), F), G(warp(x, F)))``.
    """
    if warped_fake.shape != fake_of_warped.shape:
        raise ValueError(f"ctn_loss: shapes {warped_fake.shape} and {fake_of_warped.shape} differ")
    return jnp.mean(jnp.square(warped_fake - fake_of_warped))


def flow_rms(flow: jax.Array) -> jax.Array:
    """RMS displacement of a (..., 2) pixel flow: sqrt(mean(dx² + dy²)), in pixels."""
    return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(flow), axis=-1)))
