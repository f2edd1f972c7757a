"""Content-aware optimization (CO) and LSGAN terms (SPEC §4): the closed-form fast path against
per-patch autodiff (``vmap(grad)``) and against a ``torch.func`` reference, plus invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch_co_reference import torch_co_weights, torch_co_weights_for
from torch_reference import TorchDiscriminator, randomize_

from cptrans_jax.convert import discriminator_params_from_torch
from cptrans_jax.losses.content_aware import (
    co_deltas_fast,
    co_deltas_vmap,
    co_weights,
    co_weights_for,
    num_selected,
)
from cptrans_jax.losses.gan import patch_losses, weighted_gan_loss
from cptrans_jax.models import Discriminator

ETA, LAMBDA_INC = 0.4, 2.0


def make_d(width: int, seed: int = 0) -> tuple[TorchDiscriminator, dict]:
    """An ordinary-scale random D in torch and the same weights as Flax params."""
    net = randomize_(TorchDiscriminator(width), seed=seed)
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    return net, discriminator_params_from_torch(sd, Discriminator(width=width))


def d_apply(params: dict, tokens: jax.Array) -> jax.Array:
    return Discriminator(width=tokens.shape[-1]).apply({"params": params}, tokens)


fast = jax.jit(co_deltas_fast)
vmap_path = jax.jit(co_deltas_vmap, static_argnums=(0, 4))
weights_of = jax.jit(co_weights, static_argnums=(1, 2))


def random_tokens(b: int, n: int, c: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(b, n, c)).astype(np.float32)


def check_all_paths(
    net,
    params,
    tokens: np.ndarray,
    target: float,
    chunk: int,
    torch_dtype: torch.dtype = torch.float32,
) -> dict:
    """δ, U and weights by the fast path, the vmap path and torch.func; asserts agreement."""
    x = jnp.asarray(tokens)
    d_fast = np.asarray(fast(params, x, target))
    d_vmap = np.asarray(vmap_path(d_apply, params, x, target, chunk))
    w_fast, s_fast = map(np.asarray, weights_of(jnp.asarray(d_fast), ETA, LAMBDA_INC))
    w_vmap, s_vmap = map(np.asarray, weights_of(jnp.asarray(d_vmap), ETA, LAMBDA_INC))
    w_ref, s_ref, d_ref = (
        t.numpy()
        for t in torch_co_weights_for(
            net, torch.tensor(tokens), target, ETA, LAMBDA_INC, chunk, torch_dtype
        )
    )
    errs = {
        "fast-vmap": np.abs(d_fast - d_vmap).max(),
        "fast-torch": np.abs(d_fast - d_ref).max(),
        "vmap-torch": np.abs(d_vmap - d_ref).max(),
    }
    print(
        f"target {target} {tokens.shape}: max|Δδ| "
        + ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
    )
    assert max(errs.values()) <= 1e-5
    # δ must actually vary, or the selection comparison below would be vacuous.
    assert d_ref.std() > 1e-2
    np.testing.assert_array_equal(s_fast, s_vmap)
    np.testing.assert_array_equal(s_fast, s_ref)
    np.testing.assert_allclose(w_fast, w_vmap, atol=1e-5, rtol=0)
    np.testing.assert_allclose(w_fast, w_ref, atol=1e-5, rtol=0)
    return errs


@pytest.mark.parametrize("target", [1.0, 0.0])
@pytest.mark.parametrize(("n", "c", "chunk"), [(36, 32, 16), (64, 32, 64)])
def test_fast_vmap_and_torch_agree(target, n, c, chunk):
    net, params = make_d(c, seed=n)
    check_all_paths(net, params, random_tokens(2, n, c, seed=n + int(target)), target, chunk)


def test_fast_and_vmap_agree_at_paper_size():
    # N = 576 patches, C = 768, |θ_D| = 1,181,184: the size the fast path exists for.
    _, params = make_d(768, seed=3)
    x = jnp.asarray(random_tokens(1, 576, 768, seed=7))
    for target in (1.0, 0.0):
        d_fast = np.asarray(fast(params, x, target))
        d_vmap = np.asarray(vmap_path(d_apply, params, x, target, 96))
        err = np.abs(d_fast - d_vmap).max()
        print(f"paper size, target {target}: max|δ_fast − δ_vmap| {err:.1e}")
        assert err <= 1e-5 and d_fast.std() > 1e-3
        w_f, s_f = weights_of(jnp.asarray(d_fast), ETA, LAMBDA_INC)
        w_v, s_v = weights_of(jnp.asarray(d_vmap), ETA, LAMBDA_INC)
        np.testing.assert_array_equal(s_f, s_v)
        np.testing.assert_allclose(w_f, w_v, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("target", [1.0, 0.0])
def test_paper_size_against_torch_float64(target):
    # ~1 min on 2 cores. At this size float32 torch is itself ~2e-5 from its float64 result
    # (while both JAX paths are within 1e-6 of it), so the torch side runs in float64.
    net, params = make_d(768, seed=3)
    check_all_paths(
        net, params, random_tokens(1, 576, 768, seed=7), target, 48, torch_dtype=torch.float64
    )


def test_chunk_sizes_that_do_and_do_not_divide_n():
    _, params = make_d(16, seed=1)
    x = jnp.asarray(random_tokens(2, 30, 16, seed=2))
    ref = np.asarray(vmap_path(d_apply, params, x, 1.0, 30))
    for chunk in (1, 7, 64):  # 64 > N is clamped to N
        np.testing.assert_allclose(
            np.asarray(vmap_path(d_apply, params, x, 1.0, chunk)), ref, atol=1e-6, rtol=0
        )
    np.testing.assert_allclose(np.asarray(fast(params, x, 1.0)), ref, atol=1e-5, rtol=0)


def test_vmap_path_is_generic_over_token_wise_networks():
    # A 3-layer tanh MLP with a params pytree of another shape; g_i from the full Jacobian.
    rng = np.random.default_rng(4)
    params = {
        "w": [jnp.asarray(rng.normal(size=(8, 8)) / 3, jnp.float32) for _ in range(3)],
        "b": jnp.asarray(rng.normal(size=(8,)) * 0.1, jnp.float32),
    }

    def net(p, t):
        for w in p["w"]:
            t = jnp.tanh(t @ w + p["b"])
        return t

    x = jnp.asarray(random_tokens(1, 10, 8, seed=5))
    deltas = np.asarray(jax.jit(co_deltas_vmap, static_argnums=(0, 4))(net, params, x, 0.0, 3))
    jac = jax.jacrev(lambda p: patch_losses(net(p, x[0]), 0.0))(params)
    g = np.concatenate([np.asarray(v).reshape(10, -1) for v in jax.tree.leaves(jac)], axis=1)
    g_bar = g.mean(0)
    expected = g @ g_bar / (np.linalg.norm(g, axis=1) * np.linalg.norm(g_bar))
    np.testing.assert_allclose(deltas[0], expected, atol=1e-5)


def test_co_weights_for_both_impls_and_wrapped_params():
    _, params = make_d(16, seed=2)
    x = jnp.asarray(random_tokens(2, 25, 16, seed=3))
    run = jax.jit(co_weights_for, static_argnames=("eta", "lambda_inc", "impl", "chunk_size"))
    w_f, s_f, d_f = run(params, x, 0.0, eta=ETA, lambda_inc=LAMBDA_INC, impl="fast")
    w_v, s_v, d_v = run({"params": params}, x, 0.0, eta=ETA, lambda_inc=LAMBDA_INC, impl="vmap")
    np.testing.assert_allclose(d_f, d_v, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(s_f, s_v)
    np.testing.assert_allclose(w_f, w_v, atol=1e-5, rtol=0)
    assert int(s_f[0].sum()) == 10  # round(0.4 · 25)
    with pytest.raises(ValueError, match="impl"):
        co_weights_for(params, x, 0.0, impl="loop")


@pytest.mark.parametrize("target", [1.0, 0.0])
def test_identical_patches_give_delta_one(target):
    _, params = make_d(16, seed=5)
    x = jnp.broadcast_to(jnp.asarray(random_tokens(2, 1, 16, seed=6)), (2, 12, 16))
    for deltas in (fast(params, x, target), vmap_path(d_apply, params, x, target, 5)):
        np.testing.assert_allclose(np.asarray(deltas), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("n", "eta", "k"),
    [
        (576, 0.4, 230),  # 230.4
        (785, 0.4, 314),  # ROMA's token count
        (10, 0.25, 2),  # 2.5 → 2: Python's round-half-to-even
        (14, 0.25, 4),  # 3.5 → 4
        (7, 0.0, 0),
        (7, 1.0, 7),
    ],
)
def test_exactly_round_eta_n_patches_selected(n, eta, k):
    assert num_selected(n, eta) == k
    deltas = jnp.asarray(np.random.default_rng(n).uniform(-1, 1, size=(3, n)), jnp.float32)
    weights, selected = map(np.asarray, weights_of(deltas, eta, LAMBDA_INC))
    assert (selected.sum(axis=1) == k).all()
    d = np.asarray(deltas)
    for row in range(3):
        if 0 < k < n:  # U holds the smallest δ
            assert d[row][selected[row]].max() < d[row][~selected[row]].min()
    assert (weights[~selected] == 1.0).all()  # exactly 1, not merely close
    sel_w = weights[selected]
    assert ((sel_w >= LAMBDA_INC / np.e - 1e-6) & (sel_w <= LAMBDA_INC + 1e-6)).all()
    np.testing.assert_allclose(sel_w, LAMBDA_INC / np.exp(np.abs(d[selected])), rtol=1e-6)


def test_ties_break_towards_lower_index_like_torch():
    deltas = np.array([[0.3, -0.2, 0.5, -0.2, -0.2, 0.9]], np.float32)
    _, selected = weights_of(jnp.asarray(deltas), 0.5, LAMBDA_INC)  # k = 3
    assert np.asarray(selected)[0].tolist() == [False, True, False, True, True, False]
    _, selected = weights_of(jnp.asarray(deltas), 1 / 3, LAMBDA_INC)  # k = 2 of the three ties
    assert np.asarray(selected)[0].tolist() == [False, True, False, True, False, False]
    _, ref = torch_co_weights(torch.tensor(deltas), 1 / 3, LAMBDA_INC)
    np.testing.assert_array_equal(np.asarray(selected), ref.numpy())


def test_weights_carry_no_gradient():
    _, params = make_d(16, seed=7)
    x = jnp.asarray(random_tokens(1, 20, 16, seed=8))

    def total(tokens, p):
        w, _, _ = co_weights_for(p, tokens, 1.0, eta=ETA, lambda_inc=LAMBDA_INC)
        return jnp.sum(w)

    g_x, g_p = jax.jit(jax.grad(total, argnums=(0, 1)))(x, params)
    assert all(not np.asarray(leaf).any() for leaf in jax.tree.leaves((g_x, g_p)))
    g_d = jax.grad(lambda d: jnp.sum(co_weights(d, ETA, LAMBDA_INC)[0]))(
        jnp.linspace(-1.0, 1.0, 20)[None]
    )
    assert not np.asarray(g_d).any()


def test_hyperparameter_validation():
    d = jnp.zeros((1, 5))
    for eta in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="eta"):
            co_weights(d, eta, LAMBDA_INC)
    for lam in (0.0, -1.0):
        with pytest.raises(ValueError, match="lambda_inc"):
            co_weights(d, ETA, lam)
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        co_deltas_fast({}, jnp.zeros((5, 3)), 1.0)
    with pytest.raises(ValueError, match="linear1"):
        co_deltas_fast({"dense": {}}, jnp.zeros((1, 5, 3)), 1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        co_deltas_vmap(d_apply, {}, jnp.zeros((1, 5, 3)), 1.0, 0)


def test_gan_hand_values():
    d_out = jnp.full((2, 3, 4), 0.5)
    np.testing.assert_allclose(patch_losses(d_out, 1.0), 0.25)
    np.testing.assert_allclose(patch_losses(d_out, 0.0), 0.25)
    np.testing.assert_allclose(weighted_gan_loss(d_out, 1.0), 0.25)
    # One token's outputs (0, 1, 2, 3) against target 1: ((1 + 0 + 1 + 4) / 4) = 1.5.
    d_out = d_out.at[0, 1].set(jnp.arange(4.0))
    losses = np.asarray(patch_losses(d_out, 1.0))
    np.testing.assert_allclose(losses, [[0.25, 1.5, 0.25], [0.25, 0.25, 0.25]])
    w = jnp.array([[2.0, 1.0, 1.0], [1.0, 0.5, 1.0]])
    # (2·0.25 + 1.5 + 0.25 + 0.25 + 0.5·0.25 + 0.25) / 6 = 2.875 / 6
    np.testing.assert_allclose(weighted_gan_loss(d_out, 1.0, w), 2.875 / 6, rtol=1e-6)
    # weights None is plain MSE, as ROMA uses.
    np.testing.assert_allclose(
        weighted_gan_loss(d_out, 1.0), np.mean((np.asarray(d_out) - 1.0) ** 2), rtol=1e-6
    )
    with pytest.raises(ValueError, match="broadcast"):
        weighted_gan_loss(d_out, 1.0, jnp.ones((2, 4)))
