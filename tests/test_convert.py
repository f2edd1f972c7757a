"""Weight-file loading errors and formats (issue 2): every mismatch is reported at once."""

import json

import numpy as np
import pytest
import torch
from torch_reference import TorchDiscriminator, TorchGenerator, TorchViT

from cptrans_jax.convert import (
    CheckpointMismatchError,
    discriminator_params_from_torch,
    generator_params_from_torch,
    infer_generator_architecture,
    load_safetensors,
    load_torch_generator,
    load_vit_params,
    vit_params_from_timm,
)
from cptrans_jax.models import Discriminator, Generator, ViTConfig

SMALL_G = {"ngf": 4, "n_blocks": 2}
SMALL_VIT = ViTConfig(image_size=32, patch_size=8, width=16, depth=2, num_heads=2, mlp_dim=32)


def small_g_state():
    return {k: v.numpy() for k, v in TorchGenerator(**SMALL_G).state_dict().items()}


def test_generator_reports_missing_unexpected_and_misshaped_together():
    sd = small_g_state()
    del sd["model.4.bias"]
    sd["model.13.conv_block.5.weight"] = np.zeros((16, 16, 3, 1), np.float32)
    sd["model.99.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        generator_params_from_torch(sd, Generator(**SMALL_G))
    msg = str(e.value)
    assert "missing keys (1)" in msg and "model.4.bias (expected shape (8,))" in msg
    assert "unexpected keys (1)" in msg and "model.99.weight" in msg
    assert "model.13.conv_block.5.weight: shape (16, 16, 3, 1), expected (16, 16, 3, 3)" in msg


def test_generator_blur_buffers_are_checked():
    sd = small_g_state()
    assert "model.7.filt" in sd  # the authors' files carry the fixed filters
    sd["model.7.filt"] = sd["model.7.filt"] * 2
    with pytest.raises(CheckpointMismatchError, match="model.7.filt: fixed blur filter"):
        generator_params_from_torch(sd, Generator(**SMALL_G))


def test_generator_architecture_inferred_and_module_prefix(tmp_path):
    net = TorchGenerator(**SMALL_G)
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "G.pth")
    module, params = load_torch_generator(tmp_path / "G.pth")
    assert (module.ngf, module.n_blocks) == (4, 2)
    np.testing.assert_array_equal(
        np.asarray(params["model_13"]["conv_block_5"]["kernel"]),
        net.model[13].conv_block[5].weight.detach().numpy().transpose(2, 3, 1, 0),
    )
    with pytest.raises(CheckpointMismatchError, match="not a CPTrans/ROMA generator"):
        infer_generator_architecture({"linear1.weight": np.zeros((2, 2))})


def test_wrong_network_for_file():
    """A discriminator file fed to the generator loader names every missing key."""
    sd = {k: v.numpy() for k, v in TorchDiscriminator(8).state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as e:
        generator_params_from_torch(sd, Generator(**SMALL_G))
    assert "unexpected keys (4)" in str(e.value) and "linear1.weight" in str(e.value)
    with pytest.raises(CheckpointMismatchError, match=r"linear2.bias: shape \(8,\), expected"):
        discriminator_params_from_torch(sd, Discriminator(width=16))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_torch_generator(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_vit_params(tmp_path / "nope.npz", SMALL_VIT)
    with pytest.raises(ValueError, match="unrecognised ViT weight file"):
        load_vit_params(tmp_path / "weights.h5", SMALL_VIT)


def test_corrupt_npz_is_named(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="bad.npz"):
        load_vit_params(tmp_path / "bad.npz", SMALL_VIT)
    (tmp_path / "empty.npz").write_bytes(b"")  # numpy raises EOFError for it, not ValueError
    with pytest.raises(ValueError, match=r"empty\.npz is not a readable \.npz file"):
        load_vit_params(tmp_path / "empty.npz", SMALL_VIT)


def _write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for k, a in tensors.items():
        raw = np.ascontiguousarray(a).astype("<f4").tobytes()
        header[k] = {
            "dtype": "F32",
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    path.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def test_timm_safetensors_loads_like_pth(tmp_path):
    net = TorchViT(32, 8, 16, 3, 2, 32)
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    _write_safetensors(tmp_path / "model.safetensors", sd)
    loaded = load_safetensors(tmp_path / "model.safetensors")
    for k, v in sd.items():
        np.testing.assert_array_equal(loaded[k], v)
    a = load_vit_params(tmp_path / "model.safetensors", SMALL_VIT)
    b = vit_params_from_timm(sd, SMALL_VIT)
    np.testing.assert_array_equal(
        np.asarray(
            a["Transformer"]["encoderblock_1"]["MultiHeadDotProductAttention_1"]["value"]["kernel"]
        ),
        np.asarray(
            b["Transformer"]["encoderblock_1"]["MultiHeadDotProductAttention_1"]["value"]["kernel"]
        ),
    )
    # blocks deeper than depth (block 2 here) and the head are ignored; an extra key is not
    sd["blocks.0.attn.extra"] = np.zeros(1, np.float32)
    with pytest.raises(CheckpointMismatchError, match="blocks.0.attn.extra"):
        vit_params_from_timm(sd, SMALL_VIT)


def test_vit_position_embedding_size_mismatch():
    """A ViT trained at another resolution fails with the shapes, not deep inside JAX."""
    sd = {k: v.detach().numpy() for k, v in TorchViT(48, 8, 16, 2, 2, 32).state_dict().items()}
    with pytest.raises(
        CheckpointMismatchError, match=r"pos_embed: shape \(1, 37, 16\), expected \(1, 17, 16\)"
    ):
        vit_params_from_timm(sd, SMALL_VIT)
