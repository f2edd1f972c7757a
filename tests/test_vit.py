"""Feature-ViT parity with a timm-style PyTorch ViT (SPEC §2, issue 2).

The same PyTorch weights are loaded two ways: as a timm ``state_dict`` file and as an augreg
``.npz`` written here in Google's Flax layout. Tokens after blocks 1, 3 and 5 must agree.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch_reference import TorchViT, randomize_

from cptrans_jax.convert import load_vit_params, vit_params_from_augreg, vit_params_from_timm
from cptrans_jax.models import FeatureViT, ViTConfig, vit_b16_384

SMALL = ViTConfig(
    image_size=48, patch_size=8, width=32, depth=6, num_heads=4, mlp_dim=64, local_window=3
)


def torch_vit(cfg: ViTConfig, depth: int, seed: int) -> TorchViT:
    net = TorchViT(cfg.image_size, cfg.patch_size, cfg.width, depth, cfg.num_heads, cfg.mlp_dim)
    return randomize_(net, seed).eval()


def augreg_arrays(net: TorchViT, cfg: ViTConfig) -> dict[str, np.ndarray]:
    """The PyTorch weights in augreg's Flax layout (what Google's .npz files hold)."""
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    c, h = cfg.width, cfg.num_heads
    out = {
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
        "head/kernel": sd["head.weight"].T,
        "head/bias": sd["head.bias"],
    }
    for i in range(len(net.blocks)):
        b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        w, bias = sd[t + "attn.qkv.weight"], sd[t + "attn.qkv.bias"]
        for j, name in enumerate(("query", "key", "value")):
            a = f"{b}MultiHeadDotProductAttention_1/{name}/"
            out[a + "kernel"] = w[j * c : (j + 1) * c].T.reshape(c, h, c // h)
            out[a + "bias"] = bias[j * c : (j + 1) * c].reshape(h, c // h)
        a = f"{b}MultiHeadDotProductAttention_1/out/"
        out[a + "kernel"] = sd[t + "attn.proj.weight"].T.reshape(h, c // h, c)
        out[a + "bias"] = sd[t + "attn.proj.bias"]
        for flax_name, torch_name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{b}{flax_name}/scale"] = sd[f"{t}{torch_name}.weight"]
            out[f"{b}{flax_name}/bias"] = sd[f"{t}{torch_name}.bias"]
        for k, fc in ((0, "fc1"), (1, "fc2")):
            out[f"{b}MlpBlock_3/Dense_{k}/kernel"] = sd[f"{t}mlp.{fc}.weight"].T
            out[f"{b}MlpBlock_3/Dense_{k}/bias"] = sd[f"{t}mlp.{fc}.bias"]
    return out


def torch_tokens(net, frames_nhwc, **kw):
    x = torch.tensor(frames_nhwc.transpose(0, 3, 1, 2))
    with torch.no_grad():
        if "centers" in kw:
            return [t.numpy() for t in net.local_tokens(x, **kw)]
        return [t.numpy() for t in net(x)]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    # Eight blocks in the file: blocks 6-7 and the head must be ignored, not loaded.
    net = torch_vit(SMALL, depth=8, seed=0)
    d = tmp_path_factory.mktemp("vit")
    torch.save(net.state_dict(), d / "vit.pth")
    np.savez(d / "vit.npz", **augreg_arrays(net, SMALL))
    frames = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    return net, d, frames


@pytest.mark.parametrize("filename", ["vit.pth", "vit.npz"])
def test_small_vit_tokens_parity(small, filename):
    net, d, frames = small
    params = load_vit_params(d / filename, SMALL)
    assert set(params["Transformer"]) == {"posembed_input", "encoder_norm"} | {
        f"encoderblock_{i}" for i in range(6)
    }
    ours = jax.jit(FeatureViT(SMALL).apply)({"params": params}, jnp.asarray(frames))
    ref = torch_tokens(net, frames)
    for o, r in zip(ours, ref, strict=True):
        assert o.shape == (2, 36, 32)
        assert np.abs(np.asarray(o) - r).max() <= 1e-4
    # tokens are O(1) (LayerNormed), so the tolerance is meaningful
    assert 0.3 < np.abs(ref[-1]).mean() < 3


def test_small_vit_local_tokens_parity(small):
    net, d, frames = small
    params = load_vit_params(d / "vit.pth", SMALL)
    centers = np.array([0, 7, 21, 35, 14])  # corners and edges exercise the border shift
    vit = FeatureViT(SMALL)
    ours = jax.jit(lambda p, f, c: vit.apply({"params": p}, f, c, method=vit.local_tokens))(
        params, jnp.asarray(frames), jnp.asarray(centers)
    )
    ref = torch_tokens(net, frames, centers=centers, window=3)
    for o, r in zip(ours, ref, strict=True):
        assert o.shape == (2, 5, 9, 32)
        assert np.abs(np.asarray(o) - r).max() <= 1e-4


def test_local_window_ids_are_shifted_not_truncated():
    from cptrans_jax.models import local_window_indices

    ids = np.asarray(local_window_indices(jnp.array([0, 24 * 24 - 1, 24 * 10 + 10]), 24, 7))
    assert ids.shape == (3, 49)
    np.testing.assert_array_equal(ids[0, :7], np.arange(7))  # top-left corner: rows 0-6
    assert ids[1, -1] == 575 and ids[1, 0] == 17 * 24 + 17  # bottom-right: rows/cols 17-23
    assert ids[2, 0] == 7 * 24 + 7 and ids[2, 24] == 10 * 24 + 10  # centred window


def test_augreg_and_timm_give_identical_params(small):
    _, d, _ = small
    a = vit_params_from_augreg(d / "vit.npz", SMALL)
    b = vit_params_from_timm(d / "vit.pth", SMALL)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_full_vit_b16_384_parity(tmp_path):
    """The paper's ViT-B/16 at 384 (blocks 0-5) from a timm-style file (~4 s on 2 cores)."""
    cfg = vit_b16_384()
    net = torch_vit(cfg, depth=6, seed=1)
    torch.save(net.state_dict(), tmp_path / "vit_b16_384.pth")
    params = load_vit_params(tmp_path / "vit_b16_384.pth", cfg)
    frames = np.random.default_rng(1).uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32)
    ours = jax.jit(FeatureViT(cfg).apply)({"params": params}, jnp.asarray(frames))
    ref = torch_tokens(net, frames)
    errs = [float(np.abs(np.asarray(o) - r).max()) for o, r in zip(ours, ref, strict=True)]
    print("ViT-B/16-384 token max|d| at blocks 1,3,5:", ", ".join(f"{e:.2e}" for e in errs))
    assert all(o.shape == (1, 576, 768) for o in ours)
    assert max(errs) <= 1e-4
