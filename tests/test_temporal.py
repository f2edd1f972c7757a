"""CTN pieces (SPEC §4): warp vs PyTorch grid_sample, hand-checked shifts, the CTN flow vs a
PyTorch reference, constancy of the flow, and gradients of L_ctn."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch_losses_reference import torch_ctn_flow, torch_ctn_loss, torch_warp

from cptrans_jax.losses.temporal import (
    DEFAULT_CTN_GAMMA,
    DEFAULT_CTN_SIGMA,
    blur_kernel_size,
    ctn_flow,
    ctn_loss,
    flow_rms,
    normalize_minmax,
    warp,
)

ATOL = 1e-5


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().transpose(0, 2, 3, 1)


def _images_and_flow(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random 2×17×23×3 images and flows of a few pixels, some leaving the image."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((2, 17, 23, 3)).astype(np.float32)
    flow = (3.0 * rng.standard_normal((2, 17, 23, 2))).astype(np.float32)
    flow[:, :3, :, 1] -= 6.0  # top rows sample above the image
    flow[:, :, -4:, 0] += 7.5  # right columns sample beyond the right edge
    flow[1, 5:8, 2:5] = (-9.25, 20.5)  # far out on both axes at once
    return images, flow


def _tiny_generator(seed: int = 1):
    """An arbitrary nonlinear G, NHWC in JAX and NCHW in torch: tanh(3·conv3×3(x) + x)."""
    k = np.random.default_rng(seed).standard_normal((3, 3, 3, 3)).astype(np.float32) * 0.3
    k_j = jnp.asarray(k)  # HWIO
    k_t = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))  # OIHW

    def g_jax(x):
        y = jax.lax.conv_general_dilated(
            x,
            k_j,
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )
        return jnp.tanh(3.0 * y + x)

    def g_torch(x):
        return torch.tanh(3.0 * torch.nn.functional.conv2d(x, k_t, padding=1) + x)

    return g_jax, g_torch


def test_warp_matches_grid_sample():
    images, flow = _images_and_flow()
    got = np.asarray(jax.jit(warp)(jnp.asarray(images), jnp.asarray(flow)))
    want = _nhwc(torch_warp(_nchw(images), torch.from_numpy(flow)))
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_integer_flow_is_a_clamped_shift():
    img = np.arange(20, dtype=np.float32).reshape(1, 4, 5, 1)  # img[r, c] = 5r + c
    flow = np.zeros((1, 4, 5, 2), np.float32)
    flow[..., 0] = 2.0  # sample two columns to the right
    flow[..., 1] = -1.0  # and one row up
    got = np.asarray(jax.jit(warp)(jnp.asarray(img), jnp.asarray(flow)))[0, :, :, 0]
    # out[r, c] = img[max(r − 1, 0), min(c + 2, 4)]
    expected = np.array(
        [
            [2, 3, 4, 4, 4],
            [2, 3, 4, 4, 4],
            [7, 8, 9, 9, 9],
            [12, 13, 14, 14, 14],
        ],
        np.float32,
    )
    np.testing.assert_array_equal(got, expected)
    # A half-pixel x shift averages neighbours; past the last column it is the edge value.
    flow[..., 0], flow[..., 1] = 0.5, 0.0
    got = np.asarray(jax.jit(warp)(jnp.asarray(img), jnp.asarray(flow)))[0, 0, :, 0]
    np.testing.assert_allclose(got, [0.5, 1.5, 2.5, 3.5, 4.0], atol=1e-6)


def test_zero_flow_is_identity_and_zero_ctn_loss():
    images, _ = _images_and_flow(2)
    x = jnp.asarray(images)
    zero = jnp.zeros((*images.shape[:3], 2), jnp.float32)
    g_jax, _ = _tiny_generator()

    @jax.jit
    def run(x, flow):
        return warp(x, flow), ctn_loss(warp(g_jax(x), flow), g_jax(warp(x, flow)))

    warped, loss = run(x, zero)
    np.testing.assert_array_equal(np.asarray(warped), images)
    assert float(loss) == 0.0
    # ... while a non-zero flow gives a positive loss for this G.
    _, loss = run(x, jnp.asarray(_images_and_flow(2)[1]))
    assert float(loss) > 1e-3


def test_ctn_flow_matches_torch():
    rng = np.random.default_rng(3)
    weights = rng.uniform(2 / np.e, 2.0, (2, 6, 6)).astype(np.float32)
    weights[rng.random((2, 6, 6)) < 0.6] = 1.0
    noise = rng.standard_normal((2, 40, 48, 2)).astype(np.float32)
    fn = jax.jit(ctn_flow, static_argnums=(2, 3))
    for gamma, sigma in [(9.5, 2.0), (7.0, 2.3), (3.0, 0.0)]:
        got = np.asarray(fn(jnp.asarray(weights), jnp.asarray(noise), gamma, sigma))
        want = torch_ctn_flow(
            torch.from_numpy(weights), torch.from_numpy(noise), gamma, sigma
        ).numpy()
        assert got.shape == (2, 40, 48, 2)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_ctn_flow_is_constant():
    rng = np.random.default_rng(4)
    weights = jnp.asarray(rng.uniform(0.7, 2.0, (1, 6, 6)), jnp.float32)
    noise = jnp.asarray(rng.standard_normal((1, 24, 24, 2)), jnp.float32)

    def loss(w):
        return jnp.sum(jnp.square(ctn_flow(w, noise, 5.0, 1.5)))

    value, grad = jax.jit(jax.value_and_grad(loss))(weights)
    assert float(value) > 0
    assert np.all(np.asarray(grad) == 0)


def test_minmax_normalization():
    w = jnp.asarray([[[1.0, 2.0], [0.5, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    got = np.asarray(jax.jit(normalize_minmax)(w))
    np.testing.assert_allclose(got[0], [[1 / 3, 1.0], [0.0, 1 / 3]], rtol=1e-6)
    # A constant map (the "w/o CO" ablation) gives uniform magnitude, not 0/0.
    np.testing.assert_array_equal(got[1], np.ones((2, 2)))


def test_default_flow_rms_is_about_two_pixels():
    # SPEC §8: RMS displacement 1–4 px at 256²; the defaults aim at ≈ 2 px for uniform weights.
    noise = jax.random.normal(jax.random.key(0), (2, 256, 256, 2), jnp.float32)
    flow = jax.jit(ctn_flow, static_argnums=(2, 3))(
        jnp.ones((2, 24, 24)), noise, DEFAULT_CTN_GAMMA, DEFAULT_CTN_SIGMA
    )
    assert 1.8 < float(flow_rms(flow)) < 2.2


def test_flow_rms_and_kernel_size():
    flow = jnp.broadcast_to(jnp.asarray([3.0, 4.0]), (1, 5, 7, 2))
    np.testing.assert_allclose(float(flow_rms(flow)), 5.0, rtol=1e-6)
    assert [blur_kernel_size(s) for s in (1.0, 2.0, 2.3, 8.0)] == [5, 9, 11, 33]


def test_ctn_loss_gradient_matches_torch():
    images, flow = _images_and_flow(5)
    g_jax, g_torch = _tiny_generator(6)

    def loss(x):
        f = jnp.asarray(flow)
        return ctn_loss(warp(g_jax(x), f), g_jax(warp(x, f)))

    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(images))
    x_t = _nchw(images).requires_grad_(True)
    loss_t = torch_ctn_loss(g_torch, x_t, torch.from_numpy(flow))
    loss_t.backward()
    np.testing.assert_allclose(float(value), float(loss_t.detach()), rtol=1e-5)
    want = _nhwc(x_t.grad)
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
