"""The training work directory: one trainer at a time, the config of every start, atomic files.

* :class:`WorkdirLock` — an exclusive ``flock`` on ``<workdir>/trainer.lock``, taken by process 0
  of a job before anything in the directory is touched (before Orbax cleans its temporary
  directories). The kernel drops the lock when the process dies, SIGKILL included, so a killed
  run never leaves a stale lock; the file's text (PID, host, start time) only serves the
  message a second trainer prints.
* :func:`prepare` — the directory exists (or is created), is a directory and is writable; every
  failure is one :class:`WorkdirError` line (a file in the way, a read-only or full disk).
* :func:`config_changes` / :func:`refused_changes` — what differs between the config a
  checkpoint was written with and this start's; the fields that would change the networks or the
  input stream cannot change on a resume.
* :func:`record_start` — ``config.json`` (this start's resolved config) and
  ``config_history/start_<k>.json`` (every start's: time, step, host, config and the changes it
  made), written atomically and only after the restore check has passed.
* :func:`atomic_write_bytes` — write to a temporary name in the same folder, then rename: a
  reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Mapping
from typing import Any

LOCK_NAME = "trainer.lock"
CONFIG_NAME = "config.json"
HISTORY_DIR = "config_history"

# Fields that may not change on a resume: they change the networks' parameters or function
# (model.*) or which batches the restored input position stands for (method sets the clip
# length; data.* the stream). data.data_dir (the same data set moved) and data.read_threads
# (decoding threads) do neither; the data pipeline's own state check catches a rebuilt data set.
_FROZEN_PREFIXES = ("model.", "data.")
_FROZEN_FIELDS = ("method",)
_MOVABLE_FIELDS = ("data.data_dir", "data.read_threads", "model.vit_weights")


_PROBE_BYTES = 16 * 1024


class WorkdirError(ValueError):
    """The work directory cannot be used; the message is one line saying why."""


def _describe_os_error(e: OSError) -> str:
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        reason += " (the disk is full)"
    elif e.errno == errno.EFBIG:
        reason += " (a file-size limit, e.g. ulimit -f, or a full disk)"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason += " (read-only or not yours)"
    return reason


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(path, text.encode())


def prepare(workdir: str | os.PathLike) -> str:
    """The absolute work directory, created if needed and checked to be a writable folder."""
    path = os.path.abspath(os.fspath(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"workdir {path} is a file, not a directory; give a folder")
    try:
        os.makedirs(path, exist_ok=True)
        # Probe with a real write of a few blocks: os.access says yes to root on a read-only
        # mount's folder and knows nothing of a full disk.
        atomic_write_bytes(os.path.join(path, ".write_probe"), b"\0" * _PROBE_BYTES)
        os.unlink(os.path.join(path, ".write_probe"))
    except OSError as e:
        raise WorkdirError(f"workdir {path} is not writable: {_describe_os_error(e)}") from e
    return path


class WorkdirLock:
    """An exclusive, non-blocking lock on a work directory, held until :meth:`release`.

    ``acquire`` raises :class:`WorkdirError` naming the holder when another process has it.
    """

    def __init__(self, workdir: str | os.PathLike) -> None:
        self.workdir = os.path.abspath(os.fspath(workdir))
        self.path = os.path.join(self.workdir, LOCK_NAME)
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            with open(self.path) as f:
                text = f.read().strip()
        except OSError:
            text = ""
        return text or "another process (it has not written its PID yet)"

    def acquire(self) -> WorkdirLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise WorkdirError(
                f"cannot create the lock file {self.path}: {_describe_os_error(e)}"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkdirError(
                f"workdir {self.workdir} is in use by another trainer ({self._holder()}); "
                "wait for it to finish, stop it, or give another --workdir"
            ) from None
        except OSError as e:
            os.close(fd)
            raise WorkdirError(f"cannot lock {self.path}: {_describe_os_error(e)}") from e
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        holder = f"PID {os.getpid()} on host {socket.gethostname()}, started {started}\n"
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.encode(), 0)
        except OSError as e:
            os.close(fd)
            raise WorkdirError(
                f"cannot write to workdir {self.workdir}: {_describe_os_error(e)}"
            ) from e
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # Closing drops the flock; the file stays (removing it would race a new holder).
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------------- config changes


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; tuples become lists (as after a JSON round trip)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Every field whose value differs, as ``(field, old, new)`` sorted by field; a field only
    one side has shows ``<absent>`` on the other."""
    a, b = flatten(old), flatten(new)
    absent = "<absent>"
    return [
        (k, a.get(k, absent), b.get(k, absent))
        for k in sorted(a.keys() | b.keys())
        if a.get(k, absent) != b.get(k, absent)
    ]


def is_frozen(field: str) -> bool:
    """Whether ``field`` may not change between the runs on one work directory."""
    if field in _MOVABLE_FIELDS:
        return False
    return field in _FROZEN_FIELDS or field.startswith(_FROZEN_PREFIXES)


def refused_changes(changes: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    return [c for c in changes if is_frozen(c[0])]


def format_change(change: tuple[str, Any, Any]) -> str:
    field, old, new = change
    return f"{field}: {old!r} -> {new!r}"


def read_config(workdir: str | os.PathLike) -> dict | None:
    """``<workdir>/config.json`` as a dict, None when there is none or it does not parse."""
    path = os.path.join(os.fspath(workdir), CONFIG_NAME)
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def record_start(
    workdir: str | os.PathLike,
    config: Mapping[str, Any],
    *,
    start_step: int,
    changes: list[tuple[str, Any, Any]],
) -> str:
    """Writes ``config.json`` and a new ``config_history/start_<k>.json``; returns the latter."""
    workdir = os.fspath(workdir)
    history = os.path.join(workdir, HISTORY_DIR)
    try:
        os.makedirs(history, exist_ok=True)
        taken = [int(n[6:-5]) for n in os.listdir(history) if _is_history_name(n)]
        index = max(taken, default=-1) + 1
        entry = os.path.join(history, f"start_{index:03d}.json")
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        atomic_write_json(
            entry,
            {
                "started": started,
                "start_step": start_step,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "changes": [{"field": f, "old": old, "new": new} for f, old, new in changes],
                "config": dict(config),
            },
        )
        atomic_write_json(os.path.join(workdir, CONFIG_NAME), dict(config))
    except OSError as e:
        raise WorkdirError(
            f"cannot write the config to workdir {workdir}: {_describe_os_error(e)}"
        ) from e
    return entry


def _is_history_name(name: str) -> bool:
    return name.startswith("start_") and name.endswith(".json") and name[6:-5].isdigit()


# ------------------------------------------------------------------------------- the job's claim


def claim(workdir: str | os.PathLike) -> tuple[str, WorkdirLock | None]:
    """Process 0 prepares and locks ``workdir``; every process of the job learns whether it did.

    Returns the absolute path and, on process 0, the held lock (None elsewhere). Raises
    :class:`WorkdirError` on every process when process 0 could not claim it, so a refused
    multi-process job ends everywhere instead of hanging at its first collective.
    """
    import jax
    import numpy as np

    path = os.path.abspath(os.fspath(workdir))
    lock: WorkdirLock | None = None
    error: WorkdirError | None = None
    if jax.process_index() == 0:
        try:
            path = prepare(path)
            lock = WorkdirLock(path).acquire()
        except WorkdirError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not ok and error is None:
            error = WorkdirError(f"process 0 could not claim workdir {path} (its log says why)")
    if error is not None:
        raise error
    return path, lock


class ConfigChangeError(ValueError):
    """A resume whose config changes the networks or the input stream."""


class ResumeCheck:
    """Called with each candidate checkpoint's data state before its arrays are read.

    The config the checkpoint was written with (saved in its data item; ``config.json`` for
    checkpoints of earlier versions, which did not save it) may differ from this start's only in
    fields that change neither the networks nor the input stream; :attr:`changes` holds the
    accepted differences of the checkpoint that passed.
    """

    def __init__(self, new_config: Mapping[str, Any], workdir: str) -> None:
        self.new_config = dict(new_config)
        self.workdir = workdir
        self.changes: list[tuple[str, Any, Any]] = []

    def __call__(self, step: int, data_state: Mapping[str, Any]) -> None:
        old = data_state.get("config")
        if not isinstance(old, Mapping):
            old = read_config(self.workdir)
        changes = config_changes(old, self.new_config) if old is not None else []
        refused = refused_changes(changes)
        if refused:
            raise ConfigChangeError(
                f"workdir {self.workdir}: checkpoint {step} was trained with another network or "
                "input stream; these fields cannot change on a resume: "
                + "; ".join(format_change(c) for c in refused)
                + " (set them back, or train in a new --workdir)"
            )
        self.changes = changes
