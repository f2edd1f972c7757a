"""Hand-derived values of the fixed resampling and normalization layers (SPEC §1)."""

import jax.numpy as jnp
import numpy as np
import pytest

from cptrans_jax.models.layers import blur_downsample, blur_upsample, instance_norm, reflect_pad


def _as_image(rows: np.ndarray) -> jnp.ndarray:
    """A 1-channel NHWC image whose every row is ``rows`` (so only the W axis varies)."""
    return jnp.asarray(np.tile(rows[None, :], (4, 1))[None, :, :, None], jnp.float32)


def test_blur_down_hand_values():
    # y[i] = (x[2i-1] + 2x[2i] + x[2i+1]) / 4 with x[-1] = x[1].
    x = np.array([0.0, 4.0, 8.0, 0.0, 4.0, 12.0])
    y = np.asarray(blur_downsample(_as_image(x)))[0, 0, :, 0]
    expected = [(4 + 0 + 4) / 4, (4 + 16 + 0) / 4, (0 + 8 + 12) / 4]
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6)


def test_blur_up_hand_values():
    # y[2i] = .75x[i] + .25x[i-1], y[2i+1] = .75x[i] + .25x[i+1], edges replicated.
    x = np.array([0.0, 4.0, 8.0, 20.0])
    y = np.asarray(blur_upsample(_as_image(x)))[0, 0, :, 0]
    expected = [0, 1, 3, 5, 7, 11, 17, 20]
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6)


def test_blur_up_preserves_constants_and_shapes():
    x = jnp.full((2, 5, 3, 4), 0.7)
    y = blur_upsample(x)
    assert y.shape == (2, 10, 6, 4)
    np.testing.assert_allclose(np.asarray(y), 0.7, atol=1e-6)
    assert blur_downsample(x).shape == (2, 3, 2, 4)


def test_blur_down_rejects_single_pixel():
    with pytest.raises(ValueError, match="at least 2 pixels"):
        blur_downsample(jnp.zeros((1, 1, 4, 1)))


def test_instance_norm_statistics_and_eps():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(3.0, 2.0, (2, 5, 7, 3)), jnp.float32)
    y = np.asarray(instance_norm(x))
    np.testing.assert_allclose(y.mean(axis=(1, 2)), 0, atol=1e-5)
    # biased variance, eps inside the root: var(y) = v / (v + eps)
    v = np.asarray(x).var(axis=(1, 2))
    np.testing.assert_allclose(y.var(axis=(1, 2)), v / (v + 1e-5), rtol=1e-5)
    # a constant channel maps to exactly 0
    assert np.all(np.asarray(instance_norm(jnp.ones((1, 3, 3, 1)))) == 0)


def test_reflect_pad_matches_numpy():
    x = np.arange(12.0).reshape(1, 3, 4, 1)
    np.testing.assert_array_equal(
        np.asarray(reflect_pad(jnp.asarray(x), 2)),
        np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect"),
    )
