"""The training loop: data → jitted iteration on the mesh → metrics, samples, checkpoints.

:func:`train` is what ``python -m cptrans_jax.train`` runs. Every process of a multi-host job
runs it; each loads its own rows of the global batch, which
``jax.make_array_from_process_local_data`` assembles on the ``data`` mesh axis. The loop resumes
from the newest readable checkpoint in ``<workdir>/checkpoints`` (train state and input
position), so an interrupted and resumed run ends where an uninterrupted one does.

What it guards against (README, "What survives what"): a second trainer on the same work
directory (a lock, :mod:`cptrans_jax.workdir`); a damaged newest checkpoint (set aside, the
next older one used); a resume with a config that changes the networks or the input stream
(refused before anything is written; other changes are printed and recorded); SIGTERM and
SIGINT (saved at the end of the current iteration); a non-finite loss or parameter (stopped
within two iterations, naming the first bad step, nothing bad saved); a failed save, e.g. a full
disk (one line naming the step, the older checkpoints kept).

Work directory layout: ``trainer.lock``, ``config.json`` (this start's resolved config),
``config_history/start_<k>.json`` (every start's config and changes), ``checkpoints/<step>/``,
``checkpoints.unreadable/`` (damaged steps set aside), ``tensorboard/`` (scalars and image
grids), ``samples/step_<n>.png``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from cptrans_jax import config as config_lib
from cptrans_jax import workdir as workdir_lib
from cptrans_jax.checkpoints import Checkpointer, abstract_like, describe_failure
from cptrans_jax.convert import init_vit_params, load_vit_params
from cptrans_jax.data.source import ClipSource
from cptrans_jax.loop_guards import FiniteWatch, StopSignals, with_finite_flag
from cptrans_jax.metrics import MetricWriter, ProgressLogger, image_grid, save_png
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


def say_flushed(line: str) -> None:
    """The trainer's default print: flushed, because under nohup, SLURM or ``> log`` stdout is
    a block-buffered file and progress lines would otherwise appear minutes late, in bursts."""
    print(line, flush=True)


def clip_length(c: ml_collections.ConfigDict) -> int:
    """Frames per sample of the config's method: ROMA trains on two-frame clips."""
    return 2 if c.method == "roma" else 1


def make_source(
    c: ml_collections.ConfigDict, print_fn: Callable[[str], None] = say_flushed
) -> ClipSource:
    """This process's input stream for the config's data set."""
    frames = clip_length(c)
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


def _global_batch(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def _local_copy(tree: Any) -> Any:
    """A replicated global array's copy on this process's first device (for sampling)."""
    return jax.tree.map(lambda a: a.addressable_data(0), tree)


@dataclasses.dataclass(frozen=True)
class _Programs:
    """The jitted functions of one configuration (and the optimizers they close over)."""

    g_tx: Any
    d_tx: Any
    init: Callable
    iteration: Callable
    translate: Callable


_PROGRAMS: collections.OrderedDict[tuple, _Programs] = collections.OrderedDict()
_MAX_PROGRAMS = 4


def _programs(
    c: ml_collections.ConfigDict, nets: Networks, steps_per_epoch: int, mesh: jax.sharding.Mesh
) -> _Programs:
    """The jitted init, iteration and sample translation for ``c`` on ``mesh``.

    Kept per process (the last few configurations), so another ``train`` call with the same
    networks, objective, optimizer and mesh — a resumed run in a notebook, a sweep over seeds,
    the tests — reuses the traced and compiled programs instead of tracing them again. The key
    holds every config value the programs depend on; everything else (seeds, paths, intervals)
    reaches them as data.
    """
    objective = config_lib.build_objective(c)
    frame = (c.data.frame_size, c.data.frame_size)
    optim = (c.optim.g_lr, c.optim.d_lr, c.optim.constant_epochs, c.optim.decay_epochs)
    # Mesh objects that are equal need not hash alike: key by the devices and axis names (and
    # their kind: a TPU topology's compile-only devices are numbered from 0 like the CPUs).
    first = mesh.devices.flat[0]
    where = (first.platform, first.device_kind, tuple(d.id for d in mesh.devices.flat))
    where += (mesh.axis_names,)
    key = (nets, objective, optim, steps_per_epoch, frame, where)
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]
    g_tx, d_tx, g_lr, d_lr = config_lib.build_optimizers(c, steps_per_epoch)
    rep = replicated(mesh)
    programs = _Programs(
        g_tx=g_tx,
        d_tx=d_tx,
        init=jax.jit(lambda k: init_train_state(nets, g_tx, d_tx, k, frame), out_shardings=rep),
        iteration=jit_iteration(
            with_finite_flag(make_iteration(nets, objective, g_tx, d_tx, g_lr=g_lr, d_lr=d_lr)),
            mesh,
        ),
        translate=jax.jit(nets.translate),
    )
    _PROGRAMS[key] = programs
    while len(_PROGRAMS) > _MAX_PROGRAMS:
        _PROGRAMS.popitem(last=False)
    return programs


def build_programs(
    c: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, steps_per_epoch: int
) -> tuple[Networks, _Programs]:
    """G, the ViT and D of ``c`` for the platform of ``mesh``'s devices, and their jitted
    programs on ``mesh``: what :func:`train` runs, and what ``python -m cptrans_jax.plan``
    compiles ahead of time for a TPU topology (one code path, so the plan sizes the real step).
    """
    platform = mesh.devices.flat[0].platform
    nets = config_lib.build_networks(c, platform)
    return nets, _programs(c, nets, steps_per_epoch, mesh)


def _cache_size(fn: Callable) -> int | None:
    """How many compiled versions a jitted function holds (None where JAX does not say)."""
    size = getattr(fn, "_cache_size", None)
    return size() if callable(size) else None


def _compile_line(seconds: float, before: int | None, programs: _Programs) -> str:
    """The line printed after the first iteration call of a start: how long compiling took."""
    after = _cache_size(programs.iteration)
    if before is not None and after == before:  # another train() in this process compiled it
        return f"training iteration already compiled in this process ({seconds:.1f} s)"
    return f"training iteration compiled in {seconds:.1f} s"


def json_config(c: ml_collections.ConfigDict) -> dict:
    """The resolved config as plain JSON values (tuples → lists), as it is saved."""
    return json.loads(json.dumps(c.to_dict(), default=str))


def train(c: ml_collections.ConfigDict, workdir: str, *, print_fn=say_flushed) -> TrainState:
    """Trains until ``total_steps`` (or SIGTERM/SIGINT) and returns the final train state.

    SIGTERM saves and returns normally; SIGINT (Ctrl-C) saves and raises ``KeyboardInterrupt``.
    Every other way out is an exception with a one-line message: ``WorkdirError``,
    ``ConfigChangeError``, ``CheckpointMismatchError`` (refused starts, nothing written),
    ``UnreadableCheckpointError``, ``CheckpointSaveError``, ``FloatingPointError``.
    """
    config_lib.validate(c)
    workdir, lock = workdir_lib.claim(workdir)
    try:
        return _Run(c, workdir, print_fn).train()
    finally:
        if lock is not None:
            lock.release()


@dataclasses.dataclass
class _Run:
    """One start of training on a claimed work directory."""

    c: ml_collections.ConfigDict
    workdir: str
    print_fn: Callable[[str], object]

    def __post_init__(self) -> None:
        self.is_chief = jax.process_index() == 0
        self.say = self.print_fn if self.is_chief else (lambda *_: None)
        self.config = json_config(self.c)

    def train(self) -> TrainState:
        c = self.c
        started = time.monotonic()
        self.mesh = data_mesh(c.train.num_devices or None)
        check_global_batch(c.data.global_batch_size, self.mesh)
        self.source = make_source(c, self.print_fn)
        steps_per_epoch = self.source.steps_per_epoch
        self.total = config_lib.total_steps(c, steps_per_epoch)
        self.nets, self.programs = build_programs(c, self.mesh, steps_per_epoch)
        rep = replicated(self.mesh)
        if c.model.vit_weights:
            vit_params = load_vit_params(c.model.vit_weights, self.nets.vit.config)
        else:  # demo only (validate() insists on weights for real data): a fixed random ViT
            vit_params = init_vit_params(self.nets.vit.config, jax.random.key(c.train.seed + 1))
        self.vit_params = place_replicated(vit_params, self.mesh)
        self.base_rng = place_replicated(jax.random.key(c.train.seed + 2), self.mesh)

        self.checkpointer = Checkpointer(
            os.path.join(self.workdir, "checkpoints"),
            save_every=c.train.checkpoint_every,
            keep=c.train.keep_checkpoints,
        )
        self.writer = None
        try:
            state, start = self._restore(self.programs.init, rep)
            self.writer = MetricWriter(
                os.path.join(self.workdir, "tensorboard"), enabled=self.is_chief
            )
            state = self._loop(state, start)
            self.checkpointer.close()
        except BaseException:
            # The error in flight is the one to report: a save still running is abandoned
            # quietly rather than reported a second time.
            with contextlib.suppress(Exception):
                self.checkpointer.close()
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
        # Every process reports its copy of the replicated parameters, so a multi-process run
        # can be checked for agreement from the logs.
        local = jax.device_get(_local_copy((state.g_params, state.d_params)))
        checksum = sum(float(np.sum(np.asarray(x, np.float64))) for x in jax.tree.leaves(local))
        # The wall time of this start (set-up, compilation, steps, saves): what a user times.
        minutes, seconds = divmod(round(time.monotonic() - started), 60)
        self.print_fn(
            f"process {jax.process_index()}/{jax.process_count()}: finished at step "
            f"{int(state.step)} in {minutes}:{seconds:02d}, parameter checksum {checksum:.10e}"
        )
        return state

    def _restore(self, init: Callable, rep: jax.sharding.Sharding) -> tuple[TrainState, int]:
        """The newest readable, acceptable checkpoint's state, else a fresh one; then this
        start's config is recorded (only now: a refused start must leave config.json alone)."""
        check = workdir_lib.ResumeCheck(self.config, self.workdir)
        abstract = abstract_like(jax.eval_shape(init, jax.random.key(0)), rep)
        restored = self.checkpointer.restore_readable(abstract, check_data=check, warn=self.say)
        if restored is None:
            start, state = 0, init(jax.random.key(self.c.train.seed))
        else:
            start, state, extra = restored
            self.source.set_state(extra["data"])
            self.say(
                f"resumed from {self.workdir}/checkpoints/{start} (step {start} of {self.total})"
            )
            for change in check.changes:
                self.say(f"config change since step {start}: {workdir_lib.format_change(change)}")
        if self.is_chief:
            workdir_lib.record_start(
                self.workdir, self.config, start_step=start, changes=check.changes
            )
        return state, start

    def _save(self, watch: FiniteWatch, state: TrainState, step: int, force: bool) -> None:
        # Nothing non-finite is ever written: every step up to this one is checked first.
        watch.check(block=True)
        data = {"data": self.source.get_state(), "config": self.config}
        self.checkpointer.save(step, state, data, force=force)

    def _loop(self, state: TrainState, start: int) -> TrainState:
        """The iterations from ``start`` to ``total``, or until a stop signal (then saved)."""
        c = self.c
        translate = self.programs.translate
        progress = ProgressLogger(
            self.total, every=c.train.log_every, start_step=start, print_fn=self.say
        )
        watch = FiniteWatch()
        sample_batch = None
        step = start
        with StopSignals() as stop:
            while step < self.total and not (stop.received and step == start):
                local = self.source.next_batch()
                if sample_batch is None:
                    sample_batch = {k: v[:SAMPLE_ROWS, 0] for k, v in local.items()}
                batch = _global_batch(local, self.mesh)
                first = step == start
                if first:
                    compiled = _cache_size(self.programs.iteration)
                    if not compiled:  # a fresh process: say what the coming silence is
                        self.say("compiling the training iteration…")
                    began = time.monotonic()
                state, metrics = self.programs.iteration(
                    state, batch, self.vit_params, self.base_rng
                )
                if first:
                    # The first call returns once traced and compiled (the step itself runs
                    # asynchronously): the minute of silence a user would otherwise wonder about.
                    self.say(_compile_line(time.monotonic() - began, compiled, self.programs))
                step += 1
                metrics = watch.add(step, metrics)
                self.checkpointer.poll()
                last = step == self.total
                if progress.due(step):
                    watch.check(block=True)
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    progress.log(step, values)
                    self.writer.write_scalars(step, values)
                if self.is_chief and (step % c.train.sample_every == 0 or last):
                    self._samples(translate, state, sample_batch, step)
                if stop.received:
                    self._save(watch, state, step, force=True)
                    self.say(f"{stop.received}: saved step {step}, stopping")
                    break
                if self.checkpointer.should_save(step) or last:
                    self._save(watch, state, step, force=last)
            self.checkpointer.wait()
        if stop.received == "SIGINT":
            raise KeyboardInterrupt
        return state

    def _samples(self, translate: Callable, state: TrainState, batch: dict, step: int) -> None:
        fake = np.asarray(translate(_local_copy(state.g_params), batch["A"]))
        rows = zip(batch["A"], fake, batch["B"], strict=True)
        grid = image_grid([[a, f, b] for a, f, b in rows])
        self.writer.write_images(step, {"samples/infrared|translation|visible": grid})
        path = os.path.join(self.workdir, "samples", f"step_{step:07d}.png")
        try:
            save_png(path, grid)
        except OSError as e:
            raise workdir_lib.WorkdirError(
                f"writing the sample grid {path} failed: {describe_failure(e)}"
            ) from e
