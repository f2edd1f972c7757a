"""The trained generator G out of a checkpoint, for ``translate`` (and any other reader).

:func:`load_generator` accepts

* a training work directory (``<workdir>/config.json`` + ``<workdir>/checkpoints/<step>/``) or
  its ``checkpoints`` folder: the newest checkpoint that can be read is used;
* one checkpoint, ``<workdir>/checkpoints/<step>``: that one, or an error;
* the authors' PyTorch generator, ``latest_net_G.pth`` (its ngf and block count read from it).

Only G's parameters are read from an Orbax checkpoint (a partial restore of ``g_params`` onto one
device; the discriminator and optimizer states are never loaded). G's size comes from the work
directory's ``config.json`` (``model.ngf``, ``model.n_blocks``), or from the parameter shapes
when there is none, and is checked against the checkpoint's metadata before any array is read.

Damaged checkpoints. In a work directory the steps are tried newest first. A step that cannot be
read — a truncated, zeroed or overwritten data file, a deleted ``manifest.ocdbt``, ``_METADATA``
or ``state/`` folder — is reported in one line (``warning: checkpoint 6 in … is unreadable
(reason); skipped``) and the next older one is tried; only when none can be read is it an
error, naming every step and its reason. Nothing in the work directory is renamed, deleted or
written: the run may be live, and setting damaged steps aside is the trainer's job
(:meth:`cptrans_jax.checkpoints.Checkpointer.restore_readable`). A checkpoint given as one step
directory is not replaced by another: its damage is an error. A checkpoint that reads but does
not hold a G of the configured size is not damage either: that is an error at once (falling
back would silently translate with an older, differently configured model).

Every problem raises :class:`GeneratorCheckpointError` (a ``ValueError``) or
``FileNotFoundError`` with a one-line message.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cptrans_jax.models.generator import Generator
from cptrans_jax.orbax_errors import describe_failure, orbax_noise_silenced

Params = Any

# The train state's item in a step directory (``checkpoints.STATE_ITEM``; not imported from there
# so that reading a ``.pth`` never imports Orbax).
STATE_ITEM = "state"

# Longest list of differing parameters put in a mismatch message.
_MAX_LISTED = 8


class GeneratorCheckpointError(ValueError):
    """A checkpoint that cannot give a generator: the message says what was expected."""


class _DamageError(Exception):
    """Internal: one step's checkpoint cannot be read; the message is the reason."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------- locating


def _orbax_steps(path: str) -> tuple[str, list[int], bool]:
    """(checkpoints folder, steps newest first, whether one step was asked for) of ``path``."""
    name = os.path.basename(path)
    parent = os.path.dirname(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        ckpt_dir = os.path.join(path, "checkpoints")
    elif name == "checkpoints":
        ckpt_dir = path
    elif name.isdigit() and (
        os.path.isdir(os.path.join(path, STATE_ITEM)) or os.path.basename(parent) == "checkpoints"
    ):
        return parent, [int(name)], True
    else:
        raise GeneratorCheckpointError(
            f"checkpoint {path} is neither a training work directory (with checkpoints/), "
            "a checkpoint <workdir>/checkpoints/<step> nor an authors' generator .pth file"
        )
    # Orbax renames a step directory to its digits-only name only when it is complete (one being
    # written carries a tmp suffix), so every such folder is a finished checkpoint: one without
    # a state item has been damaged since, and is reported, not passed over in silence.
    steps = sorted(
        (
            int(n)
            for n in os.listdir(ckpt_dir)
            if n.isdigit() and os.path.isdir(os.path.join(ckpt_dir, n))
        ),
        reverse=True,
    )
    if not steps:
        raise GeneratorCheckpointError(f"no finished checkpoint in {ckpt_dir}")
    return ckpt_dir, steps, False


def _read_config(ckpt_dir: str) -> tuple[dict[str, int] | None, str | None]:
    """G's size from ``<workdir>/config.json`` (None without one), and the file's path."""
    config_path = os.path.join(os.path.dirname(ckpt_dir), "config.json")
    if not os.path.isfile(config_path):
        return None, None
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise GeneratorCheckpointError(
            f"{config_path}: not a readable JSON config ({describe_failure(e)})"
        ) from e
    try:
        model = config["model"]
        return {"ngf": int(model["ngf"]), "n_blocks": int(model["n_blocks"])}, config_path
    except (KeyError, TypeError, ValueError) as e:
        raise GeneratorCheckpointError(
            f"{config_path}: no model.ngf / model.n_blocks ({describe_failure(e)})"
        ) from e


def _architecture_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """ngf and n_blocks from flat G param shapes (``model_1/kernel`` is 7×7×3×ngf)."""
    if "model_1/kernel" not in shapes:
        raise GeneratorCheckpointError(
            "checkpoint has no generator parameter g_params/model_1/kernel"
        )
    blocks = {k.split("/")[0] for k in shapes if "/conv_block_1/" in k}
    return {"ngf": int(shapes["model_1/kernel"][-1]), "n_blocks": len(blocks)}


# ---------------------------------------------------------------------------------- restoring


def _restore_step(
    step_dir: str, arch: dict[str, int] | None, config_path: str | None
) -> tuple[Generator, Params]:
    """G and its params from one step directory.

    Raises:
        _DamageError: the step cannot be read (the reason in one line).
        GeneratorCheckpointError: it reads but holds no G of the expected size.
    """
    import orbax.checkpoint as ocp
    from etils import epath

    state_dir = os.path.join(step_dir, STATE_ITEM)
    if not os.path.isdir(state_dir):
        raise _DamageError(f"no {STATE_ITEM}/ folder")
    handler = ocp.PyTreeCheckpointHandler()
    try:
        try:
            metadata = handler.metadata(epath.Path(state_dir)).tree
        except Exception as e:  # noqa: BLE001 - Orbax raises many kinds for a damaged store
            raise _DamageError(f"metadata: {describe_failure(e, within=step_dir)}") from e
        if not isinstance(metadata, dict) or "g_params" not in metadata:
            raise GeneratorCheckpointError(
                f"{state_dir}: the checkpoint has no g_params (not a train state)"
            )
        on_disk = {
            k: (tuple(v.shape), np.dtype(v.dtype))
            for k, v in ocp.tree.to_flat_dict(metadata["g_params"], sep="/").items()
        }
        if arch is None:
            arch = _architecture_from_shapes({k: s for k, (s, _) in on_disk.items()})
        generator = Generator(**arch)
        _check_shapes(generator, on_disk, state_dir, config_path)
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = {
            "g_params": jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding),
                metadata["g_params"],
            )
        }
        try:
            restored = handler.restore(
                epath.Path(state_dir),
                args=ocp.args.PyTreeRestore(
                    item=target,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True,
                ),
            )
        except Exception as e:  # noqa: BLE001 - TensorStore raises bare Exceptions
            raise _DamageError(describe_failure(e, within=step_dir)) from e
    finally:
        handler.close()
    return generator, restored["g_params"]


def _check_shapes(
    generator: Generator,
    on_disk: dict[str, tuple[tuple[int, ...], np.dtype]],
    state_dir: str,
    config_path: str | None,
) -> None:
    """Raises :class:`GeneratorCheckpointError` naming the parameters that do not fit G."""
    expected = jax.eval_shape(
        generator.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    )["params"]
    import orbax.checkpoint as ocp

    expected = {
        k: (tuple(v.shape), np.dtype(v.dtype))
        for k, v in ocp.tree.to_flat_dict(expected, sep="/").items()
    }
    if expected == on_disk:
        return

    def show(entry: tuple | None) -> str:
        return "missing" if entry is None else f"{entry[0]} {entry[1]}"

    diff = sorted(
        f"{k}: checkpoint {show(on_disk.get(k))}, expected {show(expected.get(k))}"
        for k in expected.keys() | on_disk.keys()
        if expected.get(k) != on_disk.get(k)
    )
    more = f" ... and {len(diff) - _MAX_LISTED} more" if len(diff) > _MAX_LISTED else ""
    raise GeneratorCheckpointError(
        f"{state_dir}: G parameters do not match a Generator(ngf={generator.ngf}, "
        f"n_blocks={generator.n_blocks}) (from {config_path or 'the parameter shapes'}): "
        + "; ".join(diff[:_MAX_LISTED])
        + more
    )


def load_generator(
    checkpoint: str | os.PathLike, *, warn: Callable[[str], object] = _stderr
) -> tuple[Generator, Params, str]:
    """(G, its params, a description) from a work directory, a step directory or a ``.pth``.

    ``warn`` gets one line for each damaged checkpoint skipped (module docstring).

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        GeneratorCheckpointError: no usable generator in it (the message says why).
    """
    path = os.fspath(checkpoint)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if os.path.isfile(path):
        if os.path.splitext(path)[1].lower() not in (".pth", ".pt"):
            raise GeneratorCheckpointError(
                f"checkpoint {path} is neither a training work directory nor an authors' "
                "generator .pth file"
            )
        from cptrans_jax.convert import load_torch_generator

        generator, params = load_torch_generator(path)
        return generator, params, f"authors' generator {path}"
    ckpt_dir, steps, explicit = _orbax_steps(os.path.abspath(path))
    arch, config_path = _read_config(ckpt_dir)
    failed = []
    with orbax_noise_silenced():
        for step in steps:
            step_dir = os.path.join(ckpt_dir, str(step))
            try:
                generator, params = _restore_step(step_dir, arch, config_path)
            except _DamageError as e:
                if explicit:
                    raise GeneratorCheckpointError(
                        f"checkpoint {step_dir} is unreadable ({e}); give the work directory "
                        "to use its newest readable checkpoint"
                    ) from None
                warn(f"warning: checkpoint {step} in {ckpt_dir} is unreadable ({e}); skipped")
                failed.append(f"{step} ({e})")
                continue
            return generator, params, f"{step_dir} (step {step})"
    raise GeneratorCheckpointError(f"no readable checkpoint in {ckpt_dir}: " + "; ".join(failed))
