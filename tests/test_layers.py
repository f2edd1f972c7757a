"""Hand-derived values of the fixed resampling and normalization layers (SPEC §1)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cptrans_jax.models.layers import (
    blur_downsample,
    blur_upsample,
    im2col_conv,
    instance_norm,
    reflect_pad,
)


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


def _lax_conv(x, w, padding):
    dn = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=dn)


@pytest.mark.parametrize(
    "k, padding", [(3, ((1, 1), (1, 1))), (3, ((0, 0), (0, 0))), (7, ((0, 2), (3, 1)))]
)
def test_im2col_conv_is_the_convolution_and_its_gradients(k, padding):
    """Values and both gradients equal the native convolution's, in float64 (exact up to the
    summation order: 1e-12), so the float32 difference is rounding only."""
    rng = np.random.default_rng(k)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((2, 9, 11, 5)))
        w = jnp.asarray(rng.standard_normal((k, k, 5, 4)))
        ref, ref_vjp = jax.vjp(lambda x, w: _lax_conv(x, w, padding), x, w)
        dn = ("NHWC", "HWIO", "NHWC")
        out, vjp = jax.vjp(
            lambda x, w: im2col_conv(x, w, (1, 1), padding, dimension_numbers=dn), x, w
        )
        assert out.shape == ref.shape and out.dtype == jnp.float64
        conv = functools.partial(im2col_conv, window_strides=(1, 1), padding=padding)
        jaxpr = str(jax.make_jaxpr(functools.partial(conv, dimension_numbers=dn))(x, w))
        assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr  # really im2col
        np.testing.assert_allclose(out, ref, atol=1e-12)
        probe = jnp.asarray(rng.standard_normal(ref.shape))
        for got, want in zip(vjp(probe), ref_vjp(probe), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-11)


def test_im2col_conv_hands_other_convolutions_to_the_native_op():
    """Strides, dilation, groups and string padding are not im2col's: the native op runs."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 8, 8, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 4, 4)), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    cases = [
        dict(window_strides=(2, 2), padding=((1, 1), (1, 1))),
        dict(window_strides=(1, 1), padding="SAME"),
        dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), rhs_dilation=(2, 2)),
    ]
    for kw in cases:
        want = jax.lax.conv_general_dilated(x, w, dimension_numbers=dn, **kw)
        np.testing.assert_array_equal(im2col_conv(x, w, dimension_numbers=dn, **kw), want)
    w1 = w[:, :, :2]  # 2 groups of 2 input channels
    want = jax.lax.conv_general_dilated(
        x, w1, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn, feature_group_count=2
    )
    got = im2col_conv(x, w1, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn, feature_group_count=2)
    np.testing.assert_array_equal(got, want)


def test_im2col_conv_inside_flax_conv_keeps_the_parameters():
    """nn.Conv with ``conv_general_dilated=im2col_conv`` has the same parameter tree and
    output (float32 rounding) as the plain nn.Conv."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 10, 10, 6)), jnp.float32)
    plain = nn.Conv(8, (3, 3), padding=[(1, 1), (1, 1)])
    fast = nn.Conv(8, (3, 3), padding=[(1, 1), (1, 1)], conv_general_dilated=im2col_conv)
    params = plain.init(jax.random.key(0), x)
    assert jax.tree.structure(fast.init(jax.random.key(0), x)) == jax.tree.structure(params)
    np.testing.assert_allclose(fast.apply(params, x), plain.apply(params, x), atol=1e-5)


def _mirror(x):
    return x[:, :, ::-1]


def test_blur_upsample_is_mirror_equivariant():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 6, 10, 2)), jnp.float32)
    np.testing.assert_allclose(
        np.asarray(blur_upsample(_mirror(x))), np.asarray(_mirror(blur_upsample(x))), atol=1e-6
    )


def test_blur_downsample_is_left_anchored_like_the_authors():
    # The cause of the demo's left-edge band (README, "the demo"): the authors' blur-down
    # (reflect-pad 1, [1,2,1]/4, stride 2) keeps even columns 0, 2, …, so on an even width its
    # mirror image keeps the odd ones: it is not mirror-equivariant, and must stay so to match
    # their code (tests/torch_reference.py Downsample computes the same numbers).
    torch = pytest.importorskip("torch")
    from torch_reference import Downsample

    x = np.random.default_rng(1).standard_normal((1, 8, 8, 1)).astype(np.float32)
    ours = np.asarray(blur_downsample(jnp.asarray(_mirror(x))))
    theirs = Downsample(1)(torch.from_numpy(_mirror(x).transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(ours, theirs.detach().numpy().transpose(0, 2, 3, 1), atol=1e-6)
    assert np.abs(ours - np.asarray(_mirror(blur_downsample(jnp.asarray(x))))).max() > 0.1
    # On the mirror image it is the same filter centred on the odd columns, reflected at the
    # right edge: blur_down(mirror(x)) = mirror(odd-column blur_down(x)).
    odd = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 0)), mode="reflect")  # x[W] = x[W-2]
    odd = (odd[:, :, 0:-1:2] + 2 * odd[:, :, 1::2] + odd[:, :, 2::2]) / 4
    rows = np.pad(odd, ((0, 0), (1, 1), (0, 0), (0, 0)), mode="reflect")
    rows = (rows[:, 0:-2:2] + 2 * rows[:, 1:-1:2] + rows[:, 2::2]) / 4
    np.testing.assert_allclose(ours, _mirror(rows), atol=1e-6)


def test_resampling_path_weights_the_left_border_more_than_the_right():
    # G's fixed path (two blur-downs, two blur-ups) moves interior content 1.5 px to the right
    # and, because only the left border is reflected, gives its first columns gains 1, 1.75,
    # 1.5 and its last ones 0.75, 0.5, 0.25: a band a trained G cannot undo evenly at both
    # edges (the demo's left-edge stripes; a property of the authors' architecture).
    def path(c: int) -> np.ndarray:
        x = np.zeros((1, 4, 64, 1), np.float32)
        x[0, :, c] = 1.0
        y = blur_upsample(blur_upsample(blur_downsample(blur_downsample(jnp.asarray(x)))))
        return np.asarray(y)[0, 0, :, 0]

    gains = [float(path(c).sum()) for c in (0, 1, 2, 31, 61, 62, 63)]
    np.testing.assert_allclose(gains, [1.0, 1.75, 1.5, 1.0, 0.75, 0.5, 0.25], atol=1e-5)
    interior = path(31)
    assert float((interior * np.arange(64)).sum()) == pytest.approx(32.5, abs=1e-4)
