"""Saving and resuming training: the train state and the input pipeline position, with Orbax.

On-disk layout (``directory`` is ``<workdir>/checkpoints``)::

    <workdir>/checkpoints/
        <step>/                      one directory per kept checkpoint, named by the step
            state/                   the ``TrainState`` pytree (Orbax's OCDBT/Zarr array store)
            data/                    a JSON dict: input pipeline position, config hash, ...
            _CHECKPOINT_METADATA     Orbax's per-step metadata (commit time)
            commit_success.txt       written last, just before the rename
        <step>.orbax-checkpoint-tmp/ only while a save is being written (or left behind by
                                     a process killed mid-save; removed by the next start)

Guarantees:

* **Atomic steps.** Orbax writes a step into a temporary directory and renames it to ``<step>``
  only after every file of every process is written (on object stores such as ``gs://`` it
  writes a ``commit_success.txt`` last instead). A step directory that is not finished is never
  listed, so a process killed mid-save leaves the previous checkpoint as the latest one
  (``tests/test_checkpoints.py`` kills a process with every file of a step written but the
  rename not done, to check this).
* **Asynchronous saves.** ``save`` copies the arrays off the devices before it returns and
  writes them in a background thread, so the caller may donate or overwrite the state at once.
  A new save first waits for the previous one; ``wait``/``close`` block until all are on disk.
* **Retention.** The last ``keep`` steps are kept; older ones are deleted after a newer save
  has committed.
* **Multi-process.** Every process calls ``save`` and ``restore`` with the same arguments; Orbax
  synchronises them, each process writes its own shards and one process finalises the step.
* **Checked restores.** The checkpoint's tree is compared with the expected one before any
  array is read; every missing, unexpected and wrongly shaped or typed leaf is named in one
  ``ValueError``. Arrays come back with the shardings of the abstract tree (see
  ``abstract_like``), already placed on the mesh.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

# Item names inside a step directory (see the module docstring).
STATE_ITEM = "state"
DATA_ITEM = "data"

# Longest list of differing leaves put in a mismatch message (a different model size can differ
# in hundreds of leaves; the first ones and the count say enough).
_MAX_LISTED = 12


def abstract_like(state: Any, sharding: jax.sharding.Sharding) -> Any:
    """The restore target of ``state``: each leaf a ``jax.ShapeDtypeStruct`` with ``sharding``.

    ``state`` may hold arrays or ``ShapeDtypeStruct``s (e.g. from ``jax.eval_shape`` of the
    initialiser, so that nothing is allocated before the restore).
    """
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


class Checkpointer:
    """Periodic, asynchronous, atomic checkpoints of a train state and a JSON data state."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        save_every: int,
        keep: int,
        async_save: bool = True,
    ) -> None:
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = save_every
        self.keep = keep
        options = ocp.CheckpointManagerOptions(
            # `max_to_keep`/`save_interval_steps` are deprecated in this Orbax in favour of these.
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_every),
            enable_async_checkpointing=async_save,
            # A process killed mid-save leaves a temporary directory; it is never listed as a
            # step, and removing it here keeps the directory from filling up across restarts.
            cleanup_tmp_directories=True,
            create=True,
        )
        # One handler per item, registered up front: without it a fresh manager does not know
        # how to read an item's metadata until that item has been saved or restored once.
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        state_handler = ocp.StandardCheckpointHandler()
        data_handler = ocp.JsonCheckpointHandler()
        registry.add(STATE_ITEM, ocp.args.StandardSave, state_handler)
        registry.add(STATE_ITEM, ocp.args.StandardRestore, state_handler)
        registry.add(DATA_ITEM, ocp.args.JsonSave, data_handler)
        registry.add(DATA_ITEM, ocp.args.JsonRestore, data_handler)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, handler_registry=registry
        )

    # -- queries -----------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest step on disk (or being written by this process), None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every kept step, ascending."""
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether ``step`` is a periodic save step."""
        return step % self.save_every == 0

    # -- saving ------------------------------------------------------------------------------

    def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
        """Starts saving ``state`` and ``data_state`` as ``step``; returns whether it started.

        Without ``force`` only steps that are multiples of ``save_every`` are saved. A step that
        is already on disk is never overwritten (returns False): the final forced save of a run
        may land on a step the periodic save has just written.
        """
        if not force and not self.should_save(step):
            return False
        if step in self._manager.all_steps():
            return False
        # Fail here, in the caller's thread, rather than in Orbax's background writer.
        try:
            json.dumps(data_state)
        except (TypeError, ValueError) as e:
            raise TypeError(f"data_state of step {step} is not JSON-serialisable: {e}") from e
        # force=True: the periodic decision is ours (above); Orbax's own would also refuse
        # any step not after its latest one.
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    STATE_ITEM: ocp.args.StandardSave(state),
                    DATA_ITEM: ocp.args.JsonSave(dict(data_state)),
                }
            ),
            force=True,
        )

    def wait(self) -> None:
        """Blocks until every started save is on disk (and old steps are deleted)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's background resources."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- restoring ---------------------------------------------------------------------------

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """The train state and data state of ``step`` (default: the latest).

        ``abstract_state`` is the expected tree of ``jax.ShapeDtypeStruct``s with shardings
        (``abstract_like``); the restored arrays take those shardings.

        Raises:
            FileNotFoundError: no checkpoint in the directory, or no checkpoint ``step``.
            ValueError: the checkpoint's tree differs from ``abstract_state`` (every difference
                is named).
        """
        # A save of this process still in flight is listed but not yet readable.
        self.wait()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(
                f"no checkpoint of step {step} in {self.directory}; "
                f"available steps: {steps or 'none'}"
            )
        self._check_tree(abstract_state, step)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{
                    STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                    DATA_ITEM: ocp.args.JsonRestore(),
                }
            ),
        )
        return restored[STATE_ITEM], dict(restored[DATA_ITEM])

    def _check_tree(self, abstract_state: Any, step: int) -> None:
        """Compares leaf paths, shapes and dtypes with the checkpoint's metadata.

        Orbax reports a structure mismatch one leaf at a time and a shape mismatch without the
        leaf's name; this names all of them, which is what tells a different model size apart.
        """
        metadata = self._manager.item_metadata(step)[STATE_ITEM]
        if metadata is None:
            raise ValueError(f"checkpoint {step} in {self.directory} has no '{STATE_ITEM}' item")
        # Both flatten to the same '/'-joined paths: Orbax stores namedtuples (optax states) as
        # lists and empty nodes not at all, which is also what flattening the target gives.
        on_disk = ocp.tree.to_flat_dict(metadata.tree, sep="/")
        expected = ocp.tree.to_flat_dict(abstract_state, sep="/")
        missing = sorted(k for k in expected if k not in on_disk)
        unexpected = sorted(k for k in on_disk if k not in expected)
        unsharded = [k for k, v in expected.items() if getattr(v, "sharding", None) is None]
        if unsharded:
            raise ValueError(
                f"abstract_state leaves without a sharding (build it with abstract_like): "
                f"{', '.join(unsharded[:_MAX_LISTED])}"
            )
        differing = []
        for key in sorted(expected.keys() & on_disk.keys()):
            want, have = expected[key], on_disk[key]
            want_shape, have_shape = tuple(want.shape), tuple(getattr(have, "shape", ()))
            want_dtype, have_dtype = want.dtype, getattr(have, "dtype", None)
            if want_shape != have_shape or (have_dtype is not None and want_dtype != have_dtype):
                differing.append(
                    f"{key}: checkpoint {have_shape} {have_dtype}, expected {want_shape} "
                    f"{want_dtype}"
                )
        if not (missing or unexpected or differing):
            return
        parts = [
            f"checkpoint {step} in {self.directory} does not match the expected train state "
            "(a different model size or optimizer?):"
        ]
        for title, items in (
            ("missing from the checkpoint", missing),
            ("in the checkpoint but not expected", unexpected),
            ("shape/dtype differs", differing),
        ):
            if items:
                listed = "\n    ".join(items[:_MAX_LISTED])
                more = (
                    f"\n    ... and {len(items) - _MAX_LISTED} more"
                    if len(items) > _MAX_LISTED
                    else ""
                )
                parts.append(f"  {len(items)} {title}:\n    {listed}{more}")
        raise ValueError("\n".join(parts))
