"""Weight files our users already have → Flax parameter pytrees.

Three kinds of file load (none needs torch installed):

* the authors' PyTorch generator and discriminator ``state_dict`` files
  (``latest_net_G.pth``, ``latest_net_D_ViT.pth``; a leading ``module.`` is tolerated),
  see :func:`load_torch_generator` and :func:`load_torch_discriminator`;
* Google's augreg ViT ``.npz`` (Flax names) and timm-style ViT ``state_dict`` files
  (``.pth``/``.pt``/``.bin`` pickles or ``.safetensors``), see :func:`load_vit_params`.

Every loader checks the whole file against the network it fills: missing keys, unexpected keys
and keys of the wrong shape are gathered into one :class:`CheckpointMismatchError` that lists
them all, so a file never loads partially. Keys a file may legitimately carry beyond what we
run (a ViT's classification head and its blocks deeper than ``depth``; the generator's fixed
blur filters, which are checked for their values) are named in the docstrings.

All returned pytrees are the inner ``params`` collection: apply a module with
``module.apply({"params": params}, x)``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from cptrans_jax.models.discriminator import Discriminator
from cptrans_jax.models.generator import Generator, generator_conv_indices
from cptrans_jax.models.vit import FeatureViT, ViTConfig, vit_b16_384
from cptrans_jax.torch_pickle import load_torch_state_dict

Params = dict
StateDict = Mapping[str, np.ndarray]


class CheckpointMismatchError(ValueError):
    """A weight file does not match the network it should fill; the message lists every key."""


@dataclass(frozen=True)
class _Rule:
    """How one Flax leaf is filled: from ``key`` of ``shape`` in the file, then ``to_flax``."""

    key: str
    shape: tuple[int, ...]
    to_flax: Callable[[np.ndarray], np.ndarray]


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _oihw_to_hwio(a: np.ndarray) -> np.ndarray:
    return np.transpose(a, (2, 3, 1, 0))


def _transpose(a: np.ndarray) -> np.ndarray:
    return np.transpose(a)


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(p, "key", p)) for p in path)


def _fill(
    source: StateDict,
    shapes: Params,
    rule_for: Callable[[str, tuple[int, ...]], _Rule],
    *,
    what: str,
    ignorable: Callable[[str], bool] = lambda key: False,
    checked: Mapping[str, Callable[[np.ndarray], str | None]] | None = None,
) -> Params:
    """Builds the params pytree of ``shapes`` from ``source`` or raises one listing error."""
    missing, misshaped, used = [], [], set()
    checked = dict(checked or {})

    def leaf(path: tuple, spec: jax.ShapeDtypeStruct) -> np.ndarray | None:
        rule = rule_for(_path_str(path), tuple(spec.shape))
        used.add(rule.key)
        if rule.key not in source:
            missing.append(f"{rule.key} (expected shape {rule.shape})")
            return None
        value = np.asarray(source[rule.key])
        if tuple(value.shape) != rule.shape:
            misshaped.append(f"{rule.key}: shape {tuple(value.shape)}, expected {rule.shape}")
            return None
        return np.asarray(rule.to_flax(value), dtype=np.float32)

    params = jax.tree_util.tree_map_with_path(leaf, shapes)
    bad_values = []
    for key, check in checked.items():
        if key in source:
            used.add(key)
            problem = check(np.asarray(source[key]))
            if problem:
                bad_values.append(f"{key}: {problem}")
    unexpected = sorted(k for k in source if k not in used and not ignorable(k))
    if missing or misshaped or unexpected or bad_values:
        lines = [f"{what} does not match the network:"]
        for title, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("keys of the wrong shape", misshaped),
            ("keys with wrong values", bad_values),
        ):
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in sorted(items))
        raise CheckpointMismatchError("\n".join(lines))
    return jax.tree.map(jnp.asarray, params)


def _param_shapes(module, *args, method=None) -> Params:
    variables = jax.eval_shape(
        lambda: module.init(jax.random.key(0), *args, **({"method": method} if method else {}))
    )
    return variables["params"]


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(flax_shape) == 4:  # HWIO → OIHW
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    if len(flax_shape) == 2:  # (in, out) → (out, in)
        return (flax_shape[1], flax_shape[0])
    return flax_shape


def _torch_rule(key: str, flax_shape: tuple[int, ...]) -> _Rule:
    """The rule for a conv/linear leaf stored PyTorch-style under ``key``."""
    if len(flax_shape) == 4:
        return _Rule(key, _torch_shape(flax_shape), _oihw_to_hwio)
    if len(flax_shape) == 2:
        return _Rule(key, _torch_shape(flax_shape), _transpose)
    return _Rule(key, flax_shape, _identity)


def _read_state_dict(source: str | os.PathLike | StateDict) -> tuple[dict, str]:
    if isinstance(source, Mapping):
        sd, what = dict(source), "state_dict"
    else:
        sd, what = load_torch_state_dict(source), os.fspath(source)
    # DataParallel checkpoints prefix every key with ``module.``.
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd, what


# ----------------------------------------------------------------------------- generator


def _blur_filter_check(taps: tuple[float, ...]) -> Callable[[np.ndarray], str | None]:
    f1 = np.asarray(taps, np.float64)
    f2 = np.outer(f1, f1)

    def check(buf: np.ndarray) -> str | None:
        if buf.ndim != 4 or buf.shape[1] != 1 or buf.shape[2:] != f2.shape:
            return f"shape {buf.shape}, expected (C, 1, {f2.shape[0]}, {f2.shape[1]})"
        if not np.allclose(buf, f2[None, None], atol=1e-6):
            return f"fixed blur filter differs from the expected {taps} outer product"
        return None

    return check


def infer_generator_architecture(state_dict: StateDict) -> dict[str, int]:
    """``ngf`` and ``n_blocks`` of a PyTorch generator ``state_dict``."""
    if "model.1.weight" not in state_dict:
        raise CheckpointMismatchError(
            "not a CPTrans/ROMA generator state_dict: key 'model.1.weight' (the first 7×7 conv) "
            f"is missing; keys start with {sorted(state_dict)[:5]}"
        )
    blocks = {
        int(m.group(1))
        for k in state_dict
        if (m := re.fullmatch(r"model\.(\d+)\.conv_block\.1\.weight", k))
    }
    return {"ngf": int(state_dict["model.1.weight"].shape[0]), "n_blocks": len(blocks)}


def generator_params_from_torch(
    source: str | os.PathLike | StateDict, generator: Generator | None = None
) -> Params:
    """Generator params from an authors' ``state_dict`` (a path or a loaded mapping).

    Keys ``model.<i>.weight|bias`` (OIHW) and ``model.<i>.conv_block.{1,5}.*``; the fixed blur
    buffers ``model.{7,11,21,25}.filt`` may be present and must hold the standard filters.
    """
    sd, what = _read_state_dict(source)
    generator = generator or Generator()
    shapes = _param_shapes(generator, jnp.zeros((1, 16, 16, 3)))
    conv_index = generator_conv_indices(generator.n_blocks)

    def rule_for(path: str, shape: tuple[int, ...]) -> _Rule:
        parts = path.split("/")
        leaf = "weight" if parts[-1] == "kernel" else "bias"
        if parts[0] in conv_index:
            return _torch_rule(f"model.{conv_index[parts[0]]}.{leaf}", shape)
        block = parts[0].split("_")[1]
        sub = parts[1].split("_")[-1]
        return _torch_rule(f"model.{block}.conv_block.{sub}.{leaf}", shape)

    up = 12 + generator.n_blocks
    down, upf = _blur_filter_check((1, 2, 1)), _blur_filter_check((1, 3, 3, 1))
    checked = {
        "model.7.filt": lambda b: down(b * 16.0),
        "model.11.filt": lambda b: down(b * 16.0),
        f"model.{up}.filt": lambda b: upf(b * 16.0),
        f"model.{up + 4}.filt": lambda b: upf(b * 16.0),
    }
    return _fill(sd, shapes, rule_for, what=what, checked=checked)


def load_torch_generator(path: str | os.PathLike) -> tuple[Generator, Params]:
    """The generator module (size read from the file) and its params, from a ``.pth`` file."""
    sd, _ = _read_state_dict(path)
    generator = Generator(**infer_generator_architecture(sd))
    return generator, generator_params_from_torch(sd, generator)


# ------------------------------------------------------------------------- discriminator


def discriminator_params_from_torch(
    source: str | os.PathLike | StateDict, discriminator: Discriminator | None = None
) -> Params:
    """Discriminator params from ``linear1.*``/``linear2.*`` (weights stored out×in)."""
    sd, what = _read_state_dict(source)
    discriminator = discriminator or Discriminator()
    shapes = _param_shapes(discriminator, jnp.zeros((1, 1, discriminator.width)))

    def rule_for(path: str, shape: tuple[int, ...]) -> _Rule:
        layer, leaf = path.split("/")
        return _torch_rule(f"{layer}.{'weight' if leaf == 'kernel' else 'bias'}", shape)

    return _fill(sd, shapes, rule_for, what=what)


def load_torch_discriminator(path: str | os.PathLike) -> tuple[Discriminator, Params]:
    """The discriminator module (width read from the file) and its params."""
    sd, _ = _read_state_dict(path)
    if "linear1.weight" not in sd:
        raise CheckpointMismatchError(
            f"{os.fspath(path)} is not a token-wise discriminator state_dict: no 'linear1.weight'"
        )
    discriminator = Discriminator(width=int(sd["linear1.weight"].shape[1]))
    return discriminator, discriminator_params_from_torch(sd, discriminator)


# ------------------------------------------------------------------------------------ ViT


def vit_param_shapes(config: ViTConfig) -> Params:
    """Shapes of a :class:`FeatureViT`'s params (all ``depth`` blocks)."""
    vit = FeatureViT(config)
    frames = jnp.zeros((1, config.image_size, config.image_size, 3))
    return _param_shapes(vit, frames, (config.depth - 1,))


def init_vit_params(config: ViTConfig, rng: jax.Array) -> Params:
    """Random ViT params with every block of ``depth`` created (for tests and smoke runs)."""
    frames = jnp.zeros((1, config.image_size, config.image_size, 3))
    return FeatureViT(config).init(rng, frames, (config.depth - 1,))["params"]


def _deep_block(depth: int, pattern: str) -> Callable[[str], bool]:
    regex = re.compile(pattern)

    def deeper(key: str) -> bool:
        m = regex.match(key)
        return bool(m) and int(m.group(1)) >= depth

    return deeper


def vit_params_from_augreg(
    source: str | os.PathLike | StateDict, config: ViTConfig | None = None
) -> Params:
    """ViT params from an augreg ``.npz`` (keys are the Flax paths joined with ``/``).

    Ignored: ``head/*``, ``pre_logits/*`` and ``Transformer/encoderblock_{i}`` for i ≥ depth.
    """
    config = config or vit_b16_384()
    if isinstance(source, Mapping):
        arrays, what = dict(source), "augreg arrays"
    else:
        what = os.fspath(source)
        if not os.path.exists(what):
            raise FileNotFoundError(f"ViT weight file not found: {what}")
        try:
            with np.load(what, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
            raise ValueError(f"{what} is not a readable .npz file ({e})") from e
    deeper = _deep_block(config.depth, r"Transformer/encoderblock_(\d+)/")

    def ignorable(key: str) -> bool:
        return key.startswith(("head/", "pre_logits/")) or deeper(key)

    def rule_for(path: str, shape: tuple[int, ...]) -> _Rule:
        return _Rule(path, shape, _identity)

    return _fill(arrays, vit_param_shapes(config), rule_for, what=what, ignorable=ignorable)


def vit_params_from_timm(
    source: str | os.PathLike | StateDict, config: ViTConfig | None = None
) -> Params:
    """ViT params from a timm ``VisionTransformer`` ``state_dict`` (``.pth``/``.bin`` or
    ``.safetensors``). Fused ``attn.qkv`` is split into query/key/value.

    Ignored: ``head.*``, ``fc_norm.*``, ``pre_logits.*`` and ``blocks.{i}.*`` for i ≥ depth.
    """
    config = config or vit_b16_384()
    if isinstance(source, Mapping):
        sd, what = dict(source), "timm state_dict"
    elif os.fspath(source).endswith(".safetensors"):
        sd, what = load_safetensors(source), os.fspath(source)
    else:
        sd, what = _read_state_dict(source)
    c, h = config.width, config.num_heads
    d = c // h
    deeper = _deep_block(config.depth, r"blocks\.(\d+)\.")

    def ignorable(key: str) -> bool:
        return key.startswith(("head.", "fc_norm.", "pre_logits.")) or deeper(key)

    def qkv(which: int, bias: bool) -> Callable[[np.ndarray], np.ndarray]:
        def take(a: np.ndarray) -> np.ndarray:
            part = a[which * c : (which + 1) * c]
            return part.reshape(h, d) if bias else part.T.reshape(c, h, d)

        return take

    block_leaf = {
        "LayerNorm_0": "norm1",
        "LayerNorm_2": "norm2",
        "MlpBlock_3/Dense_0": "mlp.fc1",
        "MlpBlock_3/Dense_1": "mlp.fc2",
    }
    qkv_index = {"query": 0, "key": 1, "value": 2}

    def rule_for(path: str, shape: tuple[int, ...]) -> _Rule:
        if path == "cls":
            return _Rule("cls_token", shape, _identity)
        if path == "Transformer/posembed_input/pos_embedding":
            return _Rule("pos_embed", shape, _identity)
        if path.startswith("embedding/"):
            leaf = "weight" if path.endswith("kernel") else "bias"
            return _torch_rule(f"patch_embed.proj.{leaf}", shape)
        if path.startswith("Transformer/encoder_norm/"):
            return _Rule(f"norm.{'weight' if path.endswith('scale') else 'bias'}", shape, _identity)
        m = re.fullmatch(r"Transformer/encoderblock_(\d+)/(.+)/(\w+)", path)
        assert m, path  # every other leaf is inside a block
        block, module, leaf = m.groups()
        prefix = f"blocks.{block}"
        if module.startswith("MultiHeadDotProductAttention_1/"):
            which = module.split("/")[1]
            if which == "out":
                if leaf == "kernel":
                    return _Rule(
                        f"{prefix}.attn.proj.weight", (c, c), lambda a: a.T.reshape(h, d, c)
                    )
                return _Rule(f"{prefix}.attn.proj.bias", (c,), _identity)
            i = qkv_index[which]
            if leaf == "kernel":
                return _Rule(f"{prefix}.attn.qkv.weight", (3 * c, c), qkv(i, bias=False))
            return _Rule(f"{prefix}.attn.qkv.bias", (3 * c,), qkv(i, bias=True))
        name = {"scale": "weight", "kernel": "weight", "bias": "bias"}[leaf]
        return _torch_rule(f"{prefix}.{block_leaf[module]}.{name}", shape)

    return _fill(sd, vit_param_shapes(config), rule_for, what=what, ignorable=ignorable)


def load_vit_params(path: str | os.PathLike, config: ViTConfig | None = None) -> Params:
    """ViT params from ``path``: ``.npz`` → augreg; ``.safetensors``/``.pth``/``.pt``/``.bin`` →
    timm. ``config`` defaults to the paper's ViT-B/16-384 (blocks 0–5)."""
    name = os.fspath(path)
    if name.endswith(".npz"):
        return vit_params_from_augreg(name, config)
    if name.endswith((".safetensors", ".pth", ".pt", ".bin")):
        return vit_params_from_timm(name, config)
    raise ValueError(
        f"unrecognised ViT weight file {name!r}: expected an augreg .npz or a timm state_dict "
        "(.pth, .pt, .bin or .safetensors)"
    )


# ---------------------------------------------------------------------------- safetensors

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file (8-byte header length, JSON header, raw little-endian data)
    into numpy arrays; BF16 tensors are widened to float32."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"weight file not found: {name}")
    with open(name, "rb") as f:
        blob = f.read()
    try:
        (n,) = np.frombuffer(blob[:8], "<u8")
        header = json.loads(blob[8 : 8 + int(n)])
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{name} is not a valid .safetensors file ({e})") from e
    data = memoryview(blob)[8 + int(n) :]
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if end > len(data):
            raise ValueError(f"{name} is truncated: tensor {key!r} ends past the file")
        raw = data[start:end]
        if info["dtype"] == "BF16":
            bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif info["dtype"] in _SAFETENSORS_DTYPES:
            arr = np.frombuffer(raw, np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<"))
        else:
            raise ValueError(f"{name}: tensor {key!r} has unsupported dtype {info['dtype']}")
        out[key] = arr.reshape(info["shape"]).copy()
    return out
