"""The training loop: data → jitted iteration on the mesh → metrics, samples, checkpoints.

:func:`train` is what ``python -m cptrans_jax.train`` runs. Every process of a multi-host job
runs it; each loads its own rows of the global batch, which
``jax.make_array_from_process_local_data`` assembles on the ``data`` mesh axis. The loop resumes
from the newest checkpoint in ``<workdir>/checkpoints`` (train state and input position), so an
interrupted and resumed run ends where an uninterrupted one does. SIGTERM (preemption) saves a
checkpoint at the end of the current iteration and stops cleanly.

Work directory layout: ``config.json`` (the resolved config), ``checkpoints/<step>/``,
``tensorboard/`` (scalars and image grids), ``samples/step_<n>.png``.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cptrans_jax import config as config_lib
from cptrans_jax.checkpoints import Checkpointer, abstract_like
from cptrans_jax.convert import init_vit_params, load_vit_params
from cptrans_jax.data.source import ClipSource
from cptrans_jax.metrics import (
    MetricWriter,
    ProgressLogger,
    check_finite,
    image_grid,
    save_png,
)
from cptrans_jax.objectives import Networks
from cptrans_jax.sharding import (
    batch_sharding,
    check_global_batch,
    data_mesh,
    jit_iteration,
    place_replicated,
    replicated,
)
from cptrans_jax.steps import TrainState, init_train_state, make_iteration

SAMPLE_ROWS = 4  # samples shown per grid


def make_source(
    c: ml_collections.ConfigDict, print_fn: Callable[[str], None] = print
) -> ClipSource:
    """This process's input stream for the config's data set."""
    frames = 2 if c.method == "roma" else 1
    if c.data.name == "demo":
        from cptrans_jax.data.demo import DemoSource

        return DemoSource(
            frame_size=c.data.frame_size,
            clip_length=frames,
            global_batch_size=c.data.global_batch_size,
            seed=c.data.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            epoch_size=c.data.epoch_size,
        )
    from cptrans_jax.data.pipeline import TFDSClipSource

    return TFDSClipSource(
        dataset=c.data.name,
        scene=c.data.scene,
        layout=c.data.layout,
        data_dir=c.data.data_dir,
        clip_length=frames,
        frame_size=c.data.frame_size,
        load_size=c.data.load_size,
        global_batch_size=c.data.global_batch_size,
        seed=c.data.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        read_threads=c.data.read_threads,
        print_fn=print_fn,
    )


class _Preemption:
    """Turns SIGTERM into a flag the loop checks once per iteration."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _Preemption:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. under a test runner's thread)
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _global_batch(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def _local_copy(tree: Any) -> Any:
    """A replicated global array's copy on this process's first device (for sampling)."""
    return jax.tree.map(lambda a: a.addressable_data(0), tree)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


def _write_config(c: ml_collections.ConfigDict, workdir: str) -> None:
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(c.to_dict(), f, indent=2, sort_keys=True, default=str)


def train(c: ml_collections.ConfigDict, workdir: str, *, print_fn=print) -> TrainState:
    """Trains until ``total_steps`` (or SIGTERM) and returns the final train state."""
    config_lib.validate(c)
    os.makedirs(workdir, exist_ok=True)
    is_chief = jax.process_index() == 0
    if is_chief:
        _write_config(c, workdir)

    mesh = data_mesh(c.train.num_devices or None)
    check_global_batch(c.data.global_batch_size, mesh)
    nets: Networks = config_lib.build_networks(c)
    objective = config_lib.build_objective(c)
    source = make_source(c, print_fn)
    steps_per_epoch = source.steps_per_epoch
    total = config_lib.total_steps(c, steps_per_epoch)
    g_tx, d_tx, g_lr, d_lr = config_lib.build_optimizers(c, steps_per_epoch)

    rep = replicated(mesh)
    frame = (c.data.frame_size, c.data.frame_size)
    init = jax.jit(lambda key: init_train_state(nets, g_tx, d_tx, key, frame), out_shardings=rep)
    state = init(jax.random.key(c.train.seed))
    if c.model.vit_weights:
        vit_params = load_vit_params(c.model.vit_weights, nets.vit.config)
    else:  # demo only (validate() insists on weights for real data): a fixed random ViT
        vit_params = init_vit_params(nets.vit.config, jax.random.key(c.train.seed + 1))
    vit_params = place_replicated(vit_params, mesh)
    base_rng = place_replicated(jax.random.key(c.train.seed + 2), mesh)

    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_every=c.train.checkpoint_every,
        keep=c.train.keep_checkpoints,
    )
    start = checkpointer.latest_step()
    if start is not None:
        state, extra = checkpointer.restore(abstract_like(state, rep), start)
        source.set_state(extra["data"])
        print_fn(f"resumed from {workdir}/checkpoints/{start} (step {start} of {total})")
    step_num = int(start or 0)

    iteration = jit_iteration(
        make_iteration(nets, objective, g_tx, d_tx, g_lr=g_lr, d_lr=d_lr), mesh
    )
    translate = jax.jit(nets.translate)
    writer = MetricWriter(os.path.join(workdir, "tensorboard"), enabled=is_chief)
    progress = ProgressLogger(
        total,
        every=c.train.log_every,
        start_step=step_num,
        print_fn=print_fn if is_chief else (lambda *_: None),
    )
    sample_batch = None

    def save(step: int, metrics: Any, *, force: bool = False) -> None:
        # Nothing non-finite is ever written: a NaN run stops before its checkpoint.
        check_finite({k: float(v) for k, v in jax.device_get(metrics).items()}, step)
        if not bool(_all_finite((state.g_params, state.d_params))):
            raise FloatingPointError(f"non-finite parameters after step {step}; not saved")
        checkpointer.save(step, state, {"data": source.get_state()}, force=force)

    metrics = None
    with _Preemption() as preemption:
        while step_num < total:
            local = source.next_batch()
            if sample_batch is None:
                sample_batch = {k: v[:SAMPLE_ROWS, 0] for k, v in local.items()}
            state, metrics = iteration(state, _global_batch(local, mesh), vit_params, base_rng)
            step_num += 1
            last = step_num == total
            if step_num % c.train.log_every == 0 or last:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                check_finite(values, step_num)
                progress.log(step_num, values)
                writer.write_scalars(step_num, values)
            if is_chief and (step_num % c.train.sample_every == 0 or last):
                fake = np.asarray(translate(_local_copy(state.g_params), sample_batch["A"]))
                grid = image_grid(
                    [
                        [a, f, b]
                        for a, f, b in zip(sample_batch["A"], fake, sample_batch["B"], strict=True)
                    ]
                )
                writer.write_images(step_num, {"samples/infrared|translation|visible": grid})
                os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
                save_png(os.path.join(workdir, "samples", f"step_{step_num:07d}.png"), grid)
            if preemption.requested:
                save(step_num, metrics, force=True)
                print_fn(f"SIGTERM: saved step {step_num}, stopping")
                break
            if checkpointer.should_save(step_num) or last:
                save(step_num, metrics, force=last)
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    # Every process reports its copy of the replicated parameters, so a multi-process run can
    # be checked for agreement from the logs.
    local = jax.device_get(_local_copy((state.g_params, state.d_params)))
    checksum = sum(float(np.sum(np.asarray(x, np.float64))) for x in jax.tree.leaves(local))
    print_fn(
        f"process {jax.process_index()}/{jax.process_count()}: finished at step {step_num}, "
        f"parameter checksum {checksum:.10e}"
    )
    return state
