"""Discriminator and ROMA multiscale pooling parity with PyTorch (SPEC §3, issue 2)."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch_reference import TorchDiscriminator, randomize_, torch_multiscale

from cptrans_jax.convert import load_torch_discriminator
from cptrans_jax.models import Discriminator, multiscale_pool_matrix, multiscale_tokens

PAPER_D_PARAMS = 1_181_184


def test_parameter_count_and_default_init():
    params = jax.jit(Discriminator().init)(jax.random.key(0), jnp.zeros((1, 1, 768)))
    assert sum(x.size for x in jax.tree.leaves(params)) == PAPER_D_PARAMS
    assert sum(p.numel() for p in TorchDiscriminator().parameters()) == PAPER_D_PARAMS
    k = np.asarray(params["params"]["linear1"]["kernel"])
    bound = 1 / np.sqrt(768)
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.99 * bound  # U(±1/√768)
    assert abs(k.std() - bound / np.sqrt(3)) < 0.01 * bound


def test_discriminator_parity_cptrans_and_roma(tmp_path):
    net = randomize_(TorchDiscriminator(), seed=0).eval()
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "D.pth")
    module, params = load_torch_discriminator(tmp_path / "D.pth")
    tokens = np.random.default_rng(0).normal(size=(2, 576, 768)).astype(np.float32)
    with torch.no_grad():
        t = torch.tensor(tokens)
        ref_cp = net(t).numpy()
        ref_roma = net(torch_multiscale(t)).numpy()
    apply = jax.jit(module.apply)
    out_cp = np.asarray(apply({"params": params}, jnp.asarray(tokens)))
    out_roma = np.asarray(apply({"params": params}, multiscale_tokens(jnp.asarray(tokens))))
    assert out_cp.shape == (2, 576, 768)
    assert out_roma.shape == (2, 785, 768)  # 576 + 144 + 36 + 16 + 9 + 4
    err_cp, err_roma = np.abs(out_cp - ref_cp).max(), np.abs(out_roma - ref_roma).max()
    print(f"D max|d|: CPTrans {err_cp:.2e}, ROMA {err_roma:.2e}")
    assert err_cp <= 1e-5 and err_roma <= 1e-5
    assert np.abs(ref_cp).mean() > 0.1  # O(1) outputs


def test_multiscale_pooling_parity_and_counts():
    tokens = np.random.default_rng(1).normal(size=(3, 576, 768)).astype(np.float32)
    ref = torch_multiscale(torch.tensor(tokens)).numpy()
    ours = np.asarray(jax.jit(multiscale_tokens)(jnp.asarray(tokens)))
    assert ours.shape == ref.shape == (3, 785, 768)
    assert np.abs(ours - ref).max() <= 1e-5
    counts = multiscale_pool_matrix(24).astype(bool).sum(1)
    # scale 2: rows i..i+2 inclusive (3, clipped at 24) × 2 columns
    assert counts[0] == 6 and counts[143] == 2 * 2  # last row window clipped to 2 rows
    assert multiscale_pool_matrix(24).shape == (209, 576)


def test_multiscale_window_hand_values():
    # 4×4 grid of token ids, one channel; scale 2 → windows at (0,0),(0,2),(2,0),(2,2)
    grid = np.arange(16, dtype=np.float32).reshape(1, 16, 1)
    out = np.asarray(multiscale_tokens(jnp.asarray(grid), scales=(2,)))[0, 16:, 0]
    # (0,0): rows 0-2, cols 0-1 → ids 0,1,4,5,8,9 ; (2,2): rows 2-3, cols 2-3 → 10,11,14,15
    np.testing.assert_allclose(out, [4.5, 6.5, 10.5, 12.5], atol=1e-6)
