"""Cross-similarity and ROMA motion losses vs PyTorch references and hand values (SPEC §4)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch_losses_reference import (
    torch_cosine,
    torch_cross_similarity,
    torch_global_cs,
    torch_local_cs,
    torch_motion,
)

from cptrans_jax.losses.similarity import (
    cosine,
    cross_similarity,
    global_cs_loss,
    local_cs_loss,
    motion_loss,
)

RTOL = 1e-5


def _tokens(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """LayerNorm-like tokens: zero mean, unit variance per feature."""
    return rng.standard_normal(shape).astype(np.float32)


def _layers(rng: np.random.Generator, n_layers: int, *shape: int) -> list[np.ndarray]:
    return [_tokens(rng, *shape) for _ in range(n_layers)]


def _t(arrays: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(a) for a in arrays]


def _j(arrays: list[np.ndarray]) -> list[jax.Array]:
    return [jnp.asarray(a) for a in arrays]


@pytest.mark.parametrize(("n", "c"), [(36, 32), (576, 768)])
def test_cross_similarity_matches_torch(n, c):
    rng = np.random.default_rng(n)
    src = _tokens(rng, 2, n, c)
    # tgt partly correlated with src, so CS is well inside (0, 1).
    tgt = 0.7 * src + 0.7 * _tokens(rng, 2, n, c)
    got = np.asarray(jax.jit(cross_similarity)(jnp.asarray(src), jnp.asarray(tgt)))
    want = torch_cross_similarity(torch.from_numpy(src), torch.from_numpy(tgt)).numpy()
    assert got.shape == (2,)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)


def test_global_cs_loss_matches_torch():
    rng = np.random.default_rng(1)
    src = _layers(rng, 3, 2, 36, 32)
    tgt = _layers(rng, 3, 2, 36, 32)
    got = float(jax.jit(global_cs_loss)(_j(src), _j(tgt)))
    want = float(torch_global_cs(_t(src), _t(tgt)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)


def test_local_cs_loss_matches_torch():
    rng = np.random.default_rng(2)
    src = _layers(rng, 3, 2, 8, 49, 32)
    tgt = [0.5 * s + _tokens(rng, *s.shape) for s in src]
    got = float(jax.jit(local_cs_loss)(_j(src), _j(tgt)))
    want = float(torch_local_cs(_t(src), _t(tgt)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)
    # The mean over windows, batch and layers of the per-window CS.
    per_window = [
        np.asarray(jax.jit(cross_similarity)(jnp.asarray(s), jnp.asarray(t)))
        for s, t in zip(src, tgt, strict=True)
    ]
    assert per_window[0].shape == (2, 8)
    np.testing.assert_allclose(got, np.mean(per_window), rtol=RTOL)


def test_motion_loss_matches_torch_and_sums_layers():
    rng = np.random.default_rng(3)
    a0, a1, g0, g1 = (_layers(rng, 3, 2, 36, 32) for _ in range(4))
    fn = jax.jit(motion_loss)
    got = float(fn(_j(a0), _j(a1), _j(g0), _j(g1)))
    want = float(torch_motion(_t(a0), _t(a1), _t(g0), _t(g1)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)
    # A sum over layers, not a mean: three copies of one layer give three times its value.
    one = float(fn(_j(a0[:1]), _j(a1[:1]), _j(g0[:1]), _j(g1[:1])))
    three = float(fn(_j(a0[:1] * 3), _j(a1[:1] * 3), _j(g0[:1] * 3), _j(g1[:1] * 3)))
    np.testing.assert_allclose(three, 3 * one, rtol=1e-6)


def test_motion_loss_zero_for_matching_relations():
    # If G maps both frames to the same tokens as the real ones, A0·G1ᵀ == G0·A1ᵀ.
    rng = np.random.default_rng(4)
    a0, a1 = _j(_layers(rng, 3, 2, 16, 8)), _j(_layers(rng, 3, 2, 16, 8))
    np.testing.assert_allclose(float(jax.jit(motion_loss)(a0, a1, a0, a1)), 0.0, atol=1e-6)


def test_cross_similarity_zero_for_symmetric_m():
    # src == tgt ⇒ M = S·Sᵀ is symmetric ⇒ every c_i = 1 ⇒ CS = 0.
    s = jnp.asarray(_tokens(np.random.default_rng(5), 3, 10, 6))
    np.testing.assert_allclose(np.asarray(jax.jit(cross_similarity)(s, s)), 0.0, atol=1e-6)


def test_cross_similarity_hand_2x2():
    # S = I, T = [[1, 2], [3, 4]] ⇒ M = S·Tᵀ = [[1, 3], [2, 4]].
    # row 0 (1, 3) vs column 0 (1, 2): cos = 7 / (√10·√5);
    # row 1 (2, 4) vs column 1 (3, 4): cos = 22 / (√20·5).
    s = jnp.eye(2)
    t = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])
    c0 = 7 / (math.sqrt(10) * math.sqrt(5))
    c1 = 22 / (math.sqrt(20) * 5)
    expected = ((1 - c0) + (1 - c1)) / 2
    np.testing.assert_allclose(float(jax.jit(cross_similarity)(s, t)), expected, rtol=0, atol=1e-7)


def test_cosine_eps_convention_matches_torch():
    # Each vector is divided by max(‖v‖, eps) on its own; tiny and zero vectors included.
    x = np.array([[1.0, 2.0, 3.0], [1e-9, 0.0, 0.0], [0.0, 0.0, 0.0], [3e-9, 4e-9, 0.0]])
    y = np.array([[3.0, -1.0, 2.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [5e-9, 0.0, 1e-9]])
    x, y = x.astype(np.float32), y.astype(np.float32)
    got = np.asarray(jax.jit(cosine)(jnp.asarray(x), jnp.asarray(y)))
    want = torch_cosine(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)
    assert got[2] == 0.0  # a zero vector has cosine 0, not NaN


def test_global_cs_gradient_matches_torch():
    rng = np.random.default_rng(6)
    src = _layers(rng, 3, 2, 36, 32)
    tgt = [0.5 * s + _tokens(rng, *s.shape) for s in src]
    grads = jax.jit(jax.grad(global_cs_loss, argnums=1))(_j(src), _j(tgt))
    tgt_t = [torch.from_numpy(t).requires_grad_(True) for t in tgt]
    torch_global_cs(_t(src), tgt_t).backward()
    for g, t in zip(grads, tgt_t, strict=True):
        want = t.grad.numpy()
        np.testing.assert_allclose(np.asarray(g), want, rtol=RTOL, atol=RTOL * np.abs(want).max())


def test_layer_count_mismatch_is_an_error():
    x = [jnp.zeros((1, 4, 2))]
    with pytest.raises(ValueError, match="equal length"):
        global_cs_loss(x, x * 2)
