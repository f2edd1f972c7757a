"""Saving and resuming training: the train state and the input pipeline position, with Orbax.

On-disk layout (``directory`` is ``<workdir>/checkpoints``)::

    <workdir>/checkpoints/
        <step>/                      one directory per kept checkpoint, named by the step
            state/                   the ``TrainState`` pytree (Orbax's OCDBT/Zarr array store)
            data/                    a JSON dict: the input pipeline position ("data") and the
                                     resolved config the step was written with ("config")
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
  :class:`CheckpointMismatchError`. Arrays come back with the shardings of the abstract tree
  (see ``abstract_like``), already placed on the mesh.
* **Falling back past damage.** :meth:`Checkpointer.restore_readable` tries the steps newest
  first; one that cannot be read (a truncated, zeroed or random data file, a deleted manifest or
  item, garbage JSON) is reported in one line and *set aside* — moved, never deleted, to
  ``<directory>.unreadable/<step>`` with a ``REASON.txt`` — and the next older one is tried. A
  checkpoint that reads but does not match the expected tree is not damage: that raises.
* **Save failures in one line.** A background save that fails (a full disk, say) raises
  :class:`CheckpointSaveError` naming the step, the cause and the steps still kept, at the
  trainer's next :meth:`Checkpointer.poll` (every iteration) or :meth:`Checkpointer.wait`; the
  failed step's temporary directory is removed and the older steps are untouched (Orbax deletes
  old steps only after a newer one has committed).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from cptrans_jax.orbax_errors import describe_failure, orbax_noise_silenced

__all__ = [
    "CheckpointMismatchError",
    "CheckpointSaveError",
    "Checkpointer",
    "UnreadableCheckpointError",
    "abstract_like",
    "describe_failure",
]

# Item names inside a step directory (see the module docstring).
STATE_ITEM = "state"
DATA_ITEM = "data"

# Longest list of differing leaves put in a mismatch message (a different model size can differ
# in hundreds of leaves; the first ones and the count say enough).
_MAX_LISTED = 12

# Where unreadable steps are moved: beside the checkpoint directory, so Orbax never lists or
# cleans them up.
SET_ASIDE_SUFFIX = ".unreadable"


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose tree differs from the expected train state."""


class UnreadableCheckpointError(ValueError):
    """No checkpoint in the directory could be read (each was set aside)."""


class CheckpointSaveError(OSError):
    """A save failed (e.g. a full disk); the message is one line with the cause."""


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
        # The step of the last save started and not yet seen through by wait(). Orbax runs one
        # save at a time (a new save waits for the previous one), so any error it reports
        # belongs to this step.
        self._saving: int | None = None

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
        # A new save first waits for the previous one: report its failure as its own.
        self.wait()
        # force=True: the periodic decision is ours (above); Orbax's own would also refuse
        # any step not after its latest one.
        try:
            started = self._manager.save(
                step,
                args=ocp.args.Composite(
                    **{
                        STATE_ITEM: ocp.args.StandardSave(state),
                        DATA_ITEM: ocp.args.JsonSave(dict(data_state)),
                    }
                ),
                force=True,
            )
        except Exception as e:  # noqa: BLE001 - the synchronous part can fail like the rest
            raise self._save_error(step, e) from e
        self._saving = step if started else None
        return started

    def poll(self) -> None:
        """Raises :class:`CheckpointSaveError` if the save in flight has failed; never blocks."""
        if self._saving is None:
            return
        # The step stays remembered until wait() has seen the save through: forgetting it when
        # the writer looked finished lost the step whenever the failure landed between two
        # queries (the error then surfaced at the next wait() as "saving a checkpoint").
        try:
            self._manager.check_for_errors()
        except Exception as e:  # noqa: BLE001 - whatever the background writer raised
            raise self._save_error(self._saving, e) from e

    def wait(self) -> None:
        """Blocks until every started save is on disk (and old steps are deleted).

        Raises :class:`CheckpointSaveError` when the save in flight failed.
        """
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as e:  # noqa: BLE001 - whatever the background writer raised
            raise self._save_error(self._saving, e) from e
        self._saving = None

    def _save_error(self, step: int | None, exc: BaseException) -> CheckpointSaveError:
        self._saving = None
        # The failed step's temporary directory holds a partial write: free its space now
        # (a full disk) rather than at the next start. Only finished steps are ever listed.
        if step is not None and jax.process_index() == 0:
            for name in os.listdir(self.directory):
                if name.startswith(f"{step}.orbax-checkpoint-tmp"):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        try:
            self._manager.reload()
            kept = self.all_steps()
        except Exception:  # noqa: BLE001 - listing is best effort in an error message
            kept = []
        what = f"checkpoint {step}" if step is not None else "a checkpoint"
        return CheckpointSaveError(
            f"saving {what} to {self.directory} failed: {describe_failure(exc)}; "
            f"the checkpoints kept are {kept or 'none'}"
        )

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's background resources.

        Raises :class:`CheckpointSaveError` if the last save failed (resources are released
        all the same).
        """
        try:
            self.wait()
        finally:
            try:
                self._manager.close()
            except Exception:  # noqa: BLE001 - the failure was reported by wait()
                if self._saving is not None:
                    raise

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- restoring ---------------------------------------------------------------------------

    def restore_readable(
        self,
        abstract_state: Any,
        *,
        check_data: Callable[[int, dict], None] | None = None,
        warn: Callable[[str], object] = print,
        set_aside: bool = True,
    ) -> tuple[int, Any, dict] | None:
        """``(step, state, data_state)`` of the newest checkpoint that can be read; None when
        the directory holds none at all.

        Steps are tried newest first. One that cannot be read is reported through ``warn`` in
        one line and, with ``set_aside``, moved to ``<directory>.unreadable/<step>`` (by process
        0; a reader such as ``translate`` passes ``set_aside=False`` and only skips it).
        ``check_data(step, data_state)``, run before the arrays are read, may raise
        :class:`CheckpointMismatchError` (or any ``ValueError``) to refuse the checkpoint: that
        and a tree mismatch are not damage and propagate.

        Raises:
            UnreadableCheckpointError: there were checkpoints, and none could be read.
            CheckpointMismatchError: a readable checkpoint does not fit ``abstract_state``.
        """
        self.wait()
        _check_abstract(abstract_state)
        with orbax_noise_silenced():
            return self._restore_readable(abstract_state, check_data, warn, set_aside)

    def _restore_readable(
        self,
        abstract_state: Any,
        check_data: Callable[[int, dict], None] | None,
        warn: Callable[[str], object],
        set_aside: bool,
    ) -> tuple[int, Any, dict] | None:
        failed: list[str] = []
        for step in reversed(self.all_steps()):
            try:
                data_state = self._read_data(step)
                if check_data is not None:
                    # Outside the damage handling below: a refusal is the caller's to raise.
                    try:
                        check_data(step, data_state)
                    except Exception as e:  # noqa: BLE001
                        raise _RefusedError() from e
                self._check_tree(abstract_state, step)
                state = self._read_state(abstract_state, step)
            except _RefusedError as e:
                raise e.__cause__ from None
            except CheckpointMismatchError:
                raise
            except _DamageError as e:
                reason = str(e)
            except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many kinds
                reason = describe_failure(e, within=os.path.join(self.directory, str(step)))
            else:
                return step, state, data_state
            where = self._set_aside(step, reason) if set_aside else None
            moved = f"; moved to {where}" if where else "; skipped"
            warn(f"warning: checkpoint {step} in {self.directory} is unreadable ({reason}){moved}")
            failed.append(f"{step} ({reason})")
        if failed:
            raise UnreadableCheckpointError(
                f"no readable checkpoint in {self.directory}: " + "; ".join(failed)
            )
        return None

    def _read_data(self, step: int) -> dict:
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(**{DATA_ITEM: ocp.args.JsonRestore()})
            )
        except Exception as e:  # noqa: BLE001
            raise _DamageError(f"data state: {describe_failure(e)}") from e
        data_state = restored[DATA_ITEM]
        if not isinstance(data_state, dict):
            raise _DamageError(f"data state is a {type(data_state).__name__}, not a JSON object")
        return dict(data_state)

    def _read_state(self, abstract_state: Any, step: int) -> Any:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardRestore(abstract_state)}),
        )
        return restored[STATE_ITEM]

    def _set_aside(self, step: int, reason: str) -> str | None:
        """Moves step ``step`` out of the directory (process 0 only); returns where to."""
        target_root = self.directory + SET_ASIDE_SUFFIX
        target = os.path.join(target_root, str(step))
        if jax.process_index() == 0:
            os.makedirs(target_root, exist_ok=True)
            n = 1
            while os.path.exists(target):  # the same step set aside before
                target = os.path.join(target_root, f"{step}.{n}")
                n += 1
            os.rename(os.path.join(self.directory, str(step)), target)
            with open(os.path.join(target, "REASON.txt"), "w") as f:
                f.write(reason + "\n")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint {step} set aside")
        self._manager.reload()
        return target

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """The train state and data state of ``step`` (default: the latest).

        ``abstract_state`` is the expected tree of ``jax.ShapeDtypeStruct``s with shardings
        (``abstract_like``); the restored arrays take those shardings.

        Raises:
            FileNotFoundError: no checkpoint in the directory, or no checkpoint ``step``.
            CheckpointMismatchError: the checkpoint's tree differs from ``abstract_state``
                (every difference is named).
            UnreadableCheckpointError: the step's train-state metadata cannot be read (other
                damage raises what Orbax raises; ``restore_readable`` handles all of it).
        """
        _check_abstract(abstract_state)
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
        try:
            self._check_tree(abstract_state, step)
        except _DamageError as e:
            raise UnreadableCheckpointError(f"checkpoint {step}: {e}") from None
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
        try:
            metadata = self._manager.item_metadata(step)[STATE_ITEM]
        except Exception as e:  # noqa: BLE001 - a damaged item's metadata fails in many ways
            raise _DamageError(f"train state metadata: {describe_failure(e)}") from e
        if metadata is None:
            raise _DamageError(f"checkpoint {step} in {self.directory} has no '{STATE_ITEM}' item")
        # Both flatten to the same '/'-joined paths: Orbax stores namedtuples (optax states) as
        # lists and empty nodes not at all, which is also what flattening the target gives.
        on_disk = ocp.tree.to_flat_dict(metadata.tree, sep="/")
        expected = ocp.tree.to_flat_dict(abstract_state, sep="/")
        missing = sorted(k for k in expected if k not in on_disk)
        unexpected = sorted(k for k in on_disk if k not in expected)
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
        raise CheckpointMismatchError("\n".join(parts))


def _check_abstract(abstract_state: Any) -> None:
    """Every leaf of a restore target needs a sharding (a programming error otherwise)."""
    expected = ocp.tree.to_flat_dict(abstract_state, sep="/")
    unsharded = [k for k, v in expected.items() if getattr(v, "sharding", None) is None]
    if unsharded:
        raise ValueError(
            f"abstract_state leaves without a sharding (build it with abstract_like): "
            f"{', '.join(unsharded[:_MAX_LISTED])}"
        )


class _DamageError(Exception):
    """Internal: a step's damage, with the reason as the message."""


class _RefusedError(Exception):
    """Internal: carries the caller's refusal of a checkpoint out of the damage handling."""
