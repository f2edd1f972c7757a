"""Training configuration: the ml_collections layout, its validation, and what it builds.

A config file in ``configs/`` returns a ``ConfigDict`` made by :func:`base_config` and edited
to the paper's numbers. :func:`validate` checks every field before anything is built, so a bad
value fails at start with a message naming the field; :func:`build_objective`,
:func:`build_networks` and :func:`build_optimizers` turn a valid config into the library's
objects.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import ml_collections
import optax

from cptrans_jax.data.layouts import DATASETS as DATASET_SPECS
from cptrans_jax.data.layouts import LAYOUTS
from cptrans_jax.models import Discriminator, FeatureViT, Generator, ViTConfig, vit_b16_384
from cptrans_jax.models.generator import CONV_IMPLS, conv_impl_for
from cptrans_jax.objectives import VARIANTS, Networks, ObjectiveConfig, cptrans_variant
from cptrans_jax.precision import COMPUTE_DTYPES, MATMUL_PRECISIONS, compute_dtype, matmul_precision
from cptrans_jax.steps import Schedule, adam

DATASETS = ("demo", *DATASET_SPECS)
VIT_PRESETS = ("b16_384", "custom")


def base_config() -> ml_collections.ConfigDict:
    """Every field the trainer reads, with the CPTrans paper's defaults (SPEC §4–5, §8)."""
    c = ml_collections.ConfigDict()
    c.method = "cptrans"  # "cptrans" or "roma"
    c.variant = "full"  # CPTrans ablations: full | baseline | no_co | no_ctn

    c.data = ml_collections.ConfigDict()
    c.data.name = "demo"  # one of DATASETS
    c.data.scene = ""  # builder config of the data set (e.g. "traffic", "city_clearday")
    c.data.data_dir = ""  # TFDS data dir holding the built data set
    c.data.layout = "packed"  # the authors' packed files, or "frames" (plain frame folders)
    c.data.read_threads = 8  # Grain threads decoding and cropping clips
    c.data.frame_size = 256  # training crop (SPEC §5: resize to load_size, random crop)
    c.data.load_size = 286
    c.data.global_batch_size = 1
    c.data.seed = 0
    c.data.epoch_size = 256  # demo only: examples per epoch

    c.model = ml_collections.ConfigDict()
    c.model.ngf = 64
    c.model.n_blocks = 9
    c.model.vit_preset = "b16_384"  # or "custom" (the vit.* fields below)
    c.model.vit_weights = ""  # augreg .npz or timm .pth/.safetensors; "" = random (demo only)
    c.model.vit = ml_collections.ConfigDict(dataclasses.asdict(ViTConfig()))

    defaults = ObjectiveConfig()
    c.objective = ml_collections.ConfigDict(
        {
            f.name: getattr(defaults, f.name)
            for f in dataclasses.fields(ObjectiveConfig)
            if f.name not in ("method", "use_co", "use_ctn")
        }
    )

    c.optim = ml_collections.ConfigDict()
    c.optim.g_lr = 2e-6  # CPTrans paper
    c.optim.d_lr = 2e-6
    c.optim.constant_epochs = 100  # lr constant for these epochs ...
    c.optim.decay_epochs = 0  # ... then linear decay to 0 over these (ROMA: 100 + 100)

    c.train = ml_collections.ConfigDict()
    c.train.seed = 0
    c.train.num_devices = 0  # 0 = every device of every process
    # CPU devices JAX makes of this host when the run trains on CPUs (jax_num_cpu_devices; set
    # by train.py before JAX starts). 0 = JAX's default, one. Several split the batch (data
    # parallel, the same math); whether that beats one device using every core depends on the
    # network and the machine (the demo's G ran faster on one: configs/demo.py).
    c.train.cpu_devices = 0
    c.train.log_every = 50
    c.train.sample_every = 500  # image grids to TensorBoard and <workdir>/samples/
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.train.max_steps = 0  # 0 = (constant_epochs + decay_epochs) × steps_per_epoch
    # How G's 3×3 convolutions are computed (same parameters, same math): "im2col" (a matmul over
    # gathered patches, ~1.7× faster on XLA:CPU), "lax" (the native op, best on GPU/TPU), or
    # "auto" = im2col when the mesh's devices are CPUs, lax otherwise.
    c.train.conv_impl = "auto"
    # Precision policy of G, the ViT and D (cptrans_jax/precision.py). float32 | bfloat16: the
    # networks' compute dtype; parameters, optimizer states, the networks' outputs, the loss
    # reductions and CO's statistics stay float32. bfloat16 pays on TPUs and GPUs, not on CPUs.
    c.train.compute_dtype = "float32"
    # highest | default: the networks' matmul/conv precision. highest = float32-exact on every
    # backend (what the parity tests check); default = the backend's fastest (TPU: one bfloat16
    # pass, recent NVIDIA GPUs: TF32). The loss-side products are always highest.
    c.train.matmul_precision = "highest"
    return c


def parse_arg(arg: str | None) -> dict[str, str]:
    """``"variant=no_co,scene=traffic"`` (the part after ``:`` in ``--config``) → a dict."""
    out: dict[str, str] = {}
    for item in filter(None, (arg or "").split(",")):
        if "=" not in item:
            raise ValueError(f"config argument {item!r} must be key=value (e.g. variant=no_co)")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def scene_config(
    config_file: str,
    data_name: str,
    scenes: tuple[str, ...],
    arg: str | None,
    *,
    ablations: bool = True,
) -> ml_collections.ConfigDict:
    """The base config on one scene of a real data set, from a config file's ``scene=``,
    ``layout=`` (and, for CPTrans, ``variant=``) argument; anything else is an error."""
    args = parse_arg(arg)
    c = base_config()
    c.data.name = data_name
    c.data.scene = args.pop("scene", scenes[0])
    if c.data.scene not in scenes:
        raise ValueError(f"{config_file}: scene must be one of {scenes}, got {c.data.scene!r}")
    c.data.layout = args.pop("layout", "packed")
    if ablations:
        c.variant = args.pop("variant", "full")
    if args:
        takes = "scene=, layout= and variant=" if ablations else "scene= and layout="
        raise ValueError(f"{config_file} takes {takes}, got {sorted(args)}")
    return c


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ValueError(f"config field {field}: {message}")


def validate(c: ml_collections.ConfigDict) -> None:
    """Raises ``ValueError`` naming the first bad field (type and range checks)."""
    _check(c.method in ("cptrans", "roma"), "method", f"must be cptrans or roma, got {c.method!r}")
    _check(c.variant in VARIANTS, "variant", f"must be one of {VARIANTS}, got {c.variant!r}")
    _check(
        c.method == "cptrans" or c.variant == "full",
        "variant",
        "the ablations (baseline, no_co, no_ctn) are CPTrans's; ROMA takes variant=full",
    )
    _check(c.data.name in DATASETS, "data.name", f"must be one of {DATASETS}, got {c.data.name!r}")
    if c.data.name != "demo":
        _check(
            bool(c.data.data_dir),
            "data.data_dir",
            "is required for real data sets: the TFDS data dir data_prep/build.py built into",
        )
        _check(
            c.data.layout in LAYOUTS,
            "data.layout",
            f"must be one of {LAYOUTS}, got {c.data.layout!r}",
        )
        scenes = DATASET_SPECS[c.data.name].scenes
        _check(
            c.data.scene in scenes,
            "data.scene",
            f"{c.data.name} has scenes {scenes}, got {c.data.scene!r}",
        )
    for name in ("frame_size", "load_size", "global_batch_size", "epoch_size", "read_threads"):
        value = c.data[name]
        _check(isinstance(value, int) and value > 0, f"data.{name}", f"must be > 0, got {value}")
    _check(
        c.data.frame_size % 4 == 0, "data.frame_size", "must be a multiple of 4 (G resamples ×4)"
    )
    _check(
        c.data.load_size >= c.data.frame_size,
        "data.load_size",
        f"must be ≥ data.frame_size ({c.data.frame_size}), got {c.data.load_size}",
    )
    for name in ("ngf", "n_blocks"):
        _check(c.model[name] > 0, f"model.{name}", f"must be > 0, got {c.model[name]}")
    _check(
        c.model.vit_preset in VIT_PRESETS,
        "model.vit_preset",
        f"must be one of {VIT_PRESETS}, got {c.model.vit_preset!r}",
    )
    _check(
        c.data.name == "demo" or bool(c.model.vit_weights),
        "model.vit_weights",
        "is required for real data sets: the path of the ViT-B/16-384 augreg .npz or timm file",
    )
    for name in ("g_lr", "d_lr"):
        value = c.optim[name]
        _check(
            _finite_number(value) and value > 0,
            f"optim.{name}",
            f"must be a finite number > 0, got {value}",
        )
    for name, value in c.objective.items():
        if isinstance(value, float):
            _check(_finite_number(value), f"objective.{name}", f"must be finite, got {value}")
    for name in ("constant_epochs", "decay_epochs"):
        _check(c.optim[name] >= 0, f"optim.{name}", f"must be ≥ 0, got {c.optim[name]}")
    _check(
        c.optim.constant_epochs + c.optim.decay_epochs > 0,
        "optim.constant_epochs",
        "constant_epochs + decay_epochs must be > 0",
    )
    for name in ("log_every", "sample_every", "checkpoint_every", "keep_checkpoints"):
        _check(c.train[name] > 0, f"train.{name}", f"must be > 0, got {c.train[name]}")
    _check(c.train.num_devices >= 0, "train.num_devices", "must be ≥ 0 (0 = all devices)")
    _check(
        c.train.cpu_devices >= 0,
        "train.cpu_devices",
        f"must be ≥ 0 (0 = JAX's default), got {c.train.cpu_devices}",
    )
    _check(c.train.max_steps >= 0, "train.max_steps", "must be ≥ 0 (0 = from the epochs)")
    _check(
        c.train.conv_impl in CONV_IMPL_CHOICES,
        "train.conv_impl",
        f"must be one of {CONV_IMPL_CHOICES}, got {c.train.conv_impl!r}",
    )
    _check(
        c.train.compute_dtype in COMPUTE_DTYPES,
        "train.compute_dtype",
        f"must be one of {tuple(COMPUTE_DTYPES)}, got {c.train.compute_dtype!r}",
    )
    _check(
        c.train.matmul_precision in MATMUL_PRECISIONS,
        "train.matmul_precision",
        f"must be one of {tuple(MATMUL_PRECISIONS)}, got {c.train.matmul_precision!r}",
    )
    # The dataclasses validate their own fields; re-raise naming the config section.
    try:
        build_objective(c)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config field objective: {e}") from e
    try:
        vit_config(c)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config field model.vit: {e}") from e


def vit_config(c: ml_collections.ConfigDict) -> ViTConfig:
    if c.model.vit_preset == "b16_384":
        return vit_b16_384()
    return ViTConfig(**c.model.vit.to_dict())


def build_objective(c: ml_collections.ConfigDict) -> ObjectiveConfig:
    fields = c.objective.to_dict()
    fields["vit_layers"] = tuple(fields["vit_layers"])
    fields["roma_scales"] = tuple(fields["roma_scales"])
    if c.method == "roma":
        return ObjectiveConfig(method="roma", use_co=False, use_ctn=False, **fields)
    return cptrans_variant(c.variant, **fields)


CONV_IMPL_CHOICES = ("auto", *CONV_IMPLS)


def build_networks(c: ml_collections.ConfigDict, platform: str | None = None) -> Networks:
    """G, the ViT and D of the config, all three under its precision policy (``train.*``);
    ``platform`` (of the mesh's devices) resolves ``train.conv_impl="auto"`` (None: the native
    convolution)."""
    vit = vit_config(c)
    policy = {
        "dtype": compute_dtype(c.train.compute_dtype),
        "precision": matmul_precision(c.train.matmul_precision),
    }
    conv_impl = conv_impl_for(c.train.get("conv_impl", "auto"), platform)
    return Networks(
        Generator(ngf=c.model.ngf, n_blocks=c.model.n_blocks, conv_impl=conv_impl, **policy),
        FeatureViT(vit, **policy),
        Discriminator(width=vit.width, **policy),
    )


def lr_schedule(base_lr: float, steps_per_epoch: int, constant_epochs: int, decay_epochs: int):
    """Per-epoch lr of the CycleGAN/CUT ``linear`` policy the authors use (SPEC §5).

    Epoch e (0-based) trains at ``base_lr · (1 − max(0, e + 1 − constant_epochs) /
    (decay_epochs + 1))``: constant for ``constant_epochs``, then falling linearly, stepped once
    per epoch.
    """

    def schedule(step: Any) -> Any:
        epoch = jnp.asarray(step) // steps_per_epoch
        decayed = jnp.maximum(0, epoch + 1 - constant_epochs) / (decay_epochs + 1)
        # Clamped: with train.max_steps past the schedule's end the rate stays 0, never < 0.
        return base_lr * jnp.maximum(0.0, 1.0 - decayed)

    return schedule


def build_optimizers(
    c: ml_collections.ConfigDict, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.GradientTransformation, Schedule, Schedule]:
    """G's and D's Adam with their per-epoch schedules (returned too, for the metrics)."""
    epochs = (c.optim.constant_epochs, c.optim.decay_epochs)
    g_lr = lr_schedule(c.optim.g_lr, steps_per_epoch, *epochs)
    d_lr = lr_schedule(c.optim.d_lr, steps_per_epoch, *epochs)
    return adam(g_lr), adam(d_lr), g_lr, d_lr


def total_steps(c: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if c.train.max_steps:
        return int(c.train.max_steps)
    return (c.optim.constant_epochs + c.optim.decay_epochs) * steps_per_epoch
