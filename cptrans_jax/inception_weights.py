"""pytorch-fid's FID Inception weights → variables of the Flax ``FIDInceptionV3``.

The file is ``pt_inception-2015-12-05-6726825d.pth`` (:data:`FID_WEIGHTS_URL`): the TF FID graph's
weights as a PyTorch ``state_dict`` of pytorch-fid's ``fid_inception_v3``. It is read without
torch by :func:`cptrans_jax.torch_pickle.load_torch_state_dict`.

Key ↔ variable mapping (the Flax submodule names are the file's key names):

* ``<layer>.conv.weight`` (OIHW) → ``params/<layer>/conv/kernel`` (HWIO)
* ``<layer>.bn.weight`` / ``.bn.bias`` → ``params/<layer>/bn/scale`` / ``bias``
* ``<layer>.bn.running_mean`` / ``.bn.running_var`` → ``batch_stats/<layer>/bn/mean`` / ``var``

where ``<layer>`` is e.g. ``Conv2d_1a_3x3`` or ``Mixed_6b.branch7x7_2``. Not loaded: the unused
1008-class classifier ``fc.weight`` (1008, 2048) / ``fc.bias`` (1008,), whose shapes are still
checked when present, and BatchNorm ``num_batches_tracked`` counters. Every other difference
(missing, unexpected or misshaped keys) is reported at once in a
:class:`~cptrans_jax.convert.CheckpointMismatchError`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cptrans_jax.convert import (
    CheckpointMismatchError,
    _fill,
    _oihw_to_hwio,
    _read_state_dict,
    _Rule,
)
from cptrans_jax.models.inception import FIDInceptionV3

__all__ = [
    "FID_WEIGHTS_FILE",
    "FID_WEIGHTS_URL",
    "CheckpointMismatchError",
    "inception_variable_shapes",
    "load_inception_params",
]

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
)

_FC_SHAPES = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}

# Flax leaf name → (torch leaf name, conversion).
_LEAVES: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "kernel": ("weight", _oihw_to_hwio),
    "scale": ("weight", lambda a: a),
    "bias": ("bias", lambda a: a),
    "mean": ("running_mean", lambda a: a),
    "var": ("running_var", lambda a: a),
}


def inception_variable_shapes() -> dict:
    """Shapes of ``{"params", "batch_stats"}`` of :class:`FIDInceptionV3` (nothing computed)."""
    model = FIDInceptionV3()
    # The input size is irrelevant to the variables (the resize maps it to 299 first); a small
    # one keeps eval_shape's trace cheap.
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3), jnp.float32))
    )


def _torch_key_rule(path: str, flax_shape: tuple[int, ...]) -> _Rule:
    # "params/Mixed_5b/branch1x1/conv/kernel" → "Mixed_5b.branch1x1.conv.weight"
    _collection, *modules, leaf = path.split("/")
    torch_leaf, to_flax = _LEAVES[leaf]
    if leaf == "kernel":  # HWIO → OIHW
        shape = (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    else:
        shape = flax_shape
    return _Rule(".".join([*modules, torch_leaf]), shape, to_flax)


def _fc_shape_check(expected: tuple[int, ...]) -> Callable[[np.ndarray], str | None]:
    def check(a: np.ndarray) -> str | None:
        if tuple(a.shape) == expected:
            return None
        hint = ""
        if a.shape and a.shape[0] == 1000:
            hint = (
                " (1000 classes: torchvision's ImageNet Inception, which gives different "
                f"features; FID needs {FID_WEIGHTS_FILE})"
            )
        return f"shape {tuple(a.shape)}, expected {expected}{hint}"

    return check


def _missing_file_error(path: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"FID Inception weights not found: {path}. Expected pytorch-fid's {FID_WEIGHTS_FILE} "
        f"(the TF FID Inception-v3 as a PyTorch state_dict); download it from {FID_WEIGHTS_URL}"
    )


def load_inception_params(source: str | os.PathLike | Mapping[str, np.ndarray]) -> dict:
    """Variables ``{"params": ..., "batch_stats": ...}`` of :class:`FIDInceptionV3`.

    Args:
        source: the path of pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (any file
            holding that ``state_dict``; a ``module.`` prefix is tolerated), or the
            ``state_dict`` itself as a ``{key: array}`` mapping.

    Raises:
        FileNotFoundError: the path does not exist (the message says where to get the file).
        CheckpointMismatchError: keys missing, unexpected or of the wrong shape, all listed.
        ValueError: the file is not a readable PyTorch checkpoint.
    """
    if not isinstance(source, Mapping) and not os.path.exists(os.fspath(source)):
        raise _missing_file_error(os.fspath(source))
    sd, what = _read_state_dict(source)
    if isinstance(source, Mapping):
        what = "FID Inception state_dict"
    checked = {key: _fc_shape_check(shape) for key, shape in _FC_SHAPES.items()}
    return _fill(
        sd,
        inception_variable_shapes(),
        _torch_key_rule,
        what=what,
        ignorable=lambda key: key.endswith(".num_batches_tracked"),
        checked=checked,
    )
