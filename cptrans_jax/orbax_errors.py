"""Orbax and TensorStore failures as one line, and the noise they leave behind kept quiet.

Orbax reads and writes arrays through TensorStore in asyncio tasks on background threads. A
failure (a damaged file, a full disk) comes back as a bare ``Exception`` or ``ValueError`` of a
hundred lines wrapping TensorStore's status (``OUT_OF_RANGE: Error reading …``, with the
operating system's error code as ``os_error_code='28'``), and leaves noise on stderr: each
failing thread logged with its traceback through absl, asyncio's "Task/Future exception was
never retrieved" for the sibling reads or writes, and TensorStore callbacks for requests still
in flight hitting a closed event loop ("RuntimeError: Event loop is closed", one each).

* :func:`describe_failure` — the one-line reason: the OS error's text when there is one, else
  TensorStore's status line without its store path and spec, else the exception's first words.
* :func:`orbax_noise_silenced` — drops that noise while a block runs (a reader trying damaged
  checkpoints); :func:`quiet_orbax_failures` — drops it for good (a command line, which reports
  every failure itself). Every other log record and unraisable exception passes through.

Nothing here imports Orbax, so a reader of ``.pth`` files never pays for it.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator
from typing import Any

# TensorStore's status messages start with an absl status code: "OUT_OF_RANGE: Error reading …".
_STATUS = re.compile(r"^[A-Z][A-Z_]{3,}: ")
# … name the store at length (the caller names the checkpoint already) …
_STORE = re.compile(r' (?:in OCDBT database )?at local file "[^"]*"')
# … and may append the whole TensorStore spec.
_SPEC = re.compile(r"\s*\[tensorstore_spec=.*$")
_OS_ERROR = re.compile(r"os_error_code='?(\d+)")


def errno_text(code: int) -> str:
    """``os.strerror`` with what it usually means for a training run."""
    text = os.strerror(code)
    if code in (errno.ENOSPC, errno.EDQUOT):
        text += " (the disk is full)"
    elif code == errno.EFBIG:
        text += " (a file-size limit such as ulimit -f, or a full disk)"
    return text


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def describe_failure(exc: BaseException, *, within: str | None = None, limit: int = 240) -> str:
    """A one-line reason for an exception from Orbax/TensorStore or the file system.

    ``within``: a folder whose path is dropped from the text (the caller's message names it).
    """
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno:
            return errno_text(e.errno)
        match = _OS_ERROR.search(str(e))
        if match:
            return errno_text(int(match.group(1)))
    for e in _chain(exc):
        first = (str(e).strip().splitlines() or [""])[0]
        if _STATUS.match(first):
            text = f"{type(e).__name__}: {first}"
            break
    else:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, KeyError) and exc.args:
            text = str(exc.args[0])
        text = f"{type(exc).__name__}: {text}"
    text = _SPEC.sub("", _STORE.sub("", text))
    if within:
        text = text.replace(within.rstrip(os.sep) + os.sep, "").replace(within, ".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _NoiseFilter(logging.Filter):
    """Drops Orbax's own error logs and asyncio's echo of its failed tasks and futures."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if "orbax" in (record.pathname or ""):
            return False
        # The exception (often raised in TensorStore, without Python frames) or the message
        # names Orbax's modules or its temporary paths.
        exc = record.exc_info[1] if record.exc_info else None
        text = "".join(traceback.format_tb(exc.__traceback__)) if exc is not None else ""
        message = record.getMessage()
        if "never retrieved" in message and "_read_" in message:
            return False
        return "orbax" not in f"{text} {exc} {message}"


def _is_noise(unraisable: Any) -> bool:
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and "loop is closed" in str(exc):
        return True
    # A failed read's sibling coroutines, collected unawaited.
    return str(getattr(unraisable.object, "__qualname__", "")).startswith("_read")


def _install() -> tuple[logging.Filter, Any]:
    flt = _NoiseFilter()
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(flt)
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not _is_noise(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    return flt, previous


@contextlib.contextmanager
def orbax_noise_silenced() -> Iterator[None]:
    """Drops the noise of failed Orbax reads and writes while the block runs."""
    flt, previous = _install()
    try:
        yield
    finally:
        gc.collect()  # the failed tasks and coroutines go now, inside the filters
        for name in ("absl", "asyncio"):
            logging.getLogger(name).removeFilter(flt)
        sys.unraisablehook = previous


def quiet_orbax_failures() -> None:
    """For command lines, which report every failure in one line themselves: drop Orbax's
    failure noise for the rest of the process."""
    _install()
