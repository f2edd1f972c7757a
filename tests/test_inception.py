"""FID Inception-v3 (issue 6): parity with an independent PyTorch network, resize, weight loading.

Random weights throughout (the real file cannot be downloaded here). One weights file and one
compiled forward (batch 2, 48×48 uint8: the shape test_evaluate.py also uses) are shared.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_inception_reference import random_fid_inception

from cptrans_jax.inception_weights import (
    FID_WEIGHTS_FILE,
    FID_WEIGHTS_URL,
    CheckpointMismatchError,
    load_inception_params,
)
from cptrans_jax.models.inception import bilinear_resize, inception_features

# Max |ours − torch| / max |torch| over the pool3 features; measured ≈ 5e-7 on CPU.
FEATURE_RTOL = 1e-4


@pytest.fixture(scope="module")
def torch_net():
    return random_fid_inception(0)


@pytest.fixture(scope="module")
def variables(torch_net, tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / FID_WEIGHTS_FILE
    torch.save(torch_net.state_dict(), path)
    return load_inception_params(path)


def torch_features(net, images_nhwc: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2).float()
    if images_nhwc.dtype == np.uint8:
        x = x / 255.0
    with torch.no_grad():
        return net(x).numpy()


def rel_err(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def test_features_match_torch_reference_uint8(torch_net, variables):
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    ours = np.asarray(inception_features(variables, images))
    ref = torch_features(torch_net, images)
    assert ours.shape == (2, 2048) and ours.dtype == np.float32
    assert ref.std() > 0.1  # the random network's features are far from constant
    print(f"\nInception features vs torch, uint8 2×48×48: rel {rel_err(ours, ref):.2e}")
    assert rel_err(ours, ref) <= FEATURE_RTOL
    # Same input again: bit-identical. Each image's features do not depend on its batch-mate
    # (what padding the last batch with zeros relies on).
    np.testing.assert_array_equal(np.asarray(inception_features(variables, images)), ours)
    padded = images.copy()
    padded[1] = 0
    np.testing.assert_allclose(
        np.asarray(inception_features(variables, padded))[0], ours[0], rtol=1e-5, atol=1e-5
    )


def test_features_match_torch_reference_float_non_square(torch_net, variables):
    """Float input in [0, 1], a non-square size upsampled on both axes by different factors."""
    images = np.random.default_rng(1).random((2, 61, 75, 3), dtype=np.float32)
    ours = np.asarray(inception_features(variables, images))
    err = rel_err(ours, torch_features(torch_net, images))
    print(f"\nInception features vs torch, float 2×61×75: rel {err:.2e}")
    assert err <= FEATURE_RTOL


@pytest.mark.parametrize("size", [(48, 48), (61, 75), (299, 299), (400, 333), (1, 600)])
def test_resize_matches_torch_interpolate(size):
    """Half-pixel bilinear without antialiasing, up and down, like F.interpolate."""
    x = np.random.default_rng(2).random((1, *size, 3), dtype=np.float32)
    ours = np.asarray(bilinear_resize(x, (299, 299)))
    ref = F.interpolate(
        torch.from_numpy(x).permute(0, 3, 1, 2),
        size=(299, 299),
        mode="bilinear",
        align_corners=False,
    )
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), rtol=0, atol=3e-7)


def test_converted_layout(torch_net, variables):
    sd = torch_net.state_dict()
    conv = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
    np.testing.assert_array_equal(
        np.asarray(conv), sd["Mixed_6b.branch7x7_2.conv.weight"].numpy().transpose(2, 3, 1, 0)
    )
    bn = variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]
    np.testing.assert_array_equal(np.asarray(bn["var"]), sd["Mixed_7c.branch_pool.bn.running_var"])
    assert "fc" not in variables["params"]


def test_mismatches_reported_together(torch_net):
    sd = {k: v.numpy() for k, v in torch_net.state_dict().items()}
    del sd["Mixed_5b.branch_pool.bn.running_mean"]
    sd["Conv2d_1a_3x3.conv.weight"] = np.zeros((32, 3, 5, 5), np.float32)
    sd["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
    sd["fc.weight"] = np.zeros((1000, 2048), np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        load_inception_params(sd)
    msg = str(e.value)
    assert "missing keys (1)" in msg and "Mixed_5b.branch_pool.bn.running_mean" in msg
    assert "unexpected keys (1)" in msg and "AuxLogits.fc.weight" in msg
    assert "Conv2d_1a_3x3.conv.weight: shape (32, 3, 5, 5), expected (32, 3, 3, 3)" in msg
    assert "fc.weight: shape (1000, 2048), expected (1008, 2048)" in msg
    assert "torchvision's ImageNet Inception" in msg


def test_missing_weights_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_inception_params(tmp_path / "nope.pth")
    msg = str(e.value)
    assert "nope.pth" in msg and FID_WEIGHTS_FILE in msg and FID_WEIGHTS_URL in msg
