"""What the trainer reports: TensorBoard scalars and image grids, a progress line, PNGs.

* ``MetricWriter`` — TensorBoard event files through ``tensorboardX`` (no TensorFlow). Only one
  process should write: the trainer passes ``enabled=jax.process_index() == 0``; a disabled
  writer creates no directory and no file.
* ``ProgressLogger`` — a line at the first step and every ``every`` steps with the rate and ETA
  over the recent lines (:func:`rate_and_eta`) and the loss terms; the clock and the print
  function are injectable for tests.
* ``to_uint8`` / ``image_grid`` / ``save_png`` — images in [-1, 1] to 8-bit by the output
  quantisation of SPEC §5 (clamp to [-1, 1], (x+1)/2·255, truncate), which is the authors'
  ``tensor2im``.
* ``check_finite`` — a NaN/Inf loss stops training before anything is saved.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

# Exceptions of tensorboardX's background writer threads, by thread (see _capture_tb_failures).
_TB_FAILURES: dict[threading.Thread, BaseException] = {}
_TB_HOOK_INSTALLED = False


def _capture_tb_failures() -> None:
    """Keeps a failed tensorboardX writer thread's exception for :class:`MetricWriter` to
    report (instead of a thread traceback on stderr); every other thread is left alone."""
    global _TB_HOOK_INSTALLED
    if _TB_HOOK_INSTALLED:
        return
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and type(args.thread).__module__.startswith("tensorboardX"):
            _TB_FAILURES[args.thread] = args.exc_value
            return
        previous(args)

    threading.excepthook = hook
    _TB_HOOK_INSTALLED = True


class MetricWriter:
    """TensorBoard scalars and images of one run; every method is a no-op when disabled.

    tensorboardX writes from a background thread; if that thread dies (a full disk), the next
    write raises ``OSError`` with its reason rather than blocking on the thread's full queue.
    """

    def __init__(self, logdir: str | os.PathLike, *, enabled: bool = True) -> None:
        self.logdir = os.fspath(logdir)
        self.enabled = enabled
        self._writer = None
        if enabled:
            # Imported here so that processes that never write (process_index != 0) do not pay
            # for it.
            from tensorboardX import SummaryWriter

            _capture_tb_failures()
            self._writer = SummaryWriter(logdir=self.logdir)

    def _check_worker(self) -> None:
        file_writer = getattr(self._writer, "file_writer", None)
        worker = getattr(getattr(file_writer, "event_writer", None), "_worker", None)
        if isinstance(worker, threading.Thread) and not worker.is_alive():
            failure = _TB_FAILURES.get(worker)
            reason = "its writer thread stopped"
            if isinstance(failure, OSError):
                reason = failure.strerror or str(failure)
                if failure.errno == errno.ENOSPC:
                    reason += " (the disk is full)"
            elif failure is not None:
                reason = f"{type(failure).__name__}: {failure}"
            self._writer = None  # its queue has no reader any more: never put into it again
            raise OSError(f"writing TensorBoard events to {self.logdir} failed: {reason}")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._writer is None:
            return
        self._check_worker()
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, float(value), global_step=int(step))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """``images``: tag → uint8 array (H, W, 3) (e.g. from ``image_grid``)."""
        if self._writer is None:
            return
        self._check_worker()
        for tag, image in images.items():
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3:
                raise ValueError(
                    f"image '{tag}' must be uint8 (H, W, C), got {image.dtype} {image.shape}"
                )
            self._writer.add_image(tag, image, global_step=int(step), dataformats="HWC")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is None:
            return
        # A dead writer thread would never drain the queue that close() puts into: skip it
        # (its failure is raised by the next write, or was already).
        with contextlib.suppress(OSError):
            self._check_worker()
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _format_duration(seconds: float) -> str:
    """H:MM:SS, hours unbounded (a long run's ETA stays one token)."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _format_value(value: float) -> str:
    # Four decimals for losses; learning rates (~1e-6) would print as 0.0000, so tiny values
    # get exponent notation.
    if value != 0 and math.isfinite(value) and abs(value) < 1e-3:
        return f"{value:.3e}"
    return f"{value:.4f}"


def rate_and_eta(
    marks: Sequence[tuple[int, float]], total_steps: int
) -> tuple[float, float] | None:
    """(steps per second, seconds left) from ``(step, time)`` marks, oldest first.

    The rate is measured between the first and the last mark; the time left is the steps from
    the last mark to ``total_steps`` at that rate. None when the marks span no step or no time.
    """
    if len(marks) < 2:
        return None
    (first_step, first_time), (last_step, last_time) = marks[0], marks[-1]
    steps, elapsed = last_step - first_step, last_time - first_time
    if steps <= 0 or elapsed <= 0:
        return None
    rate = steps / elapsed
    return rate, max(total_steps - last_step, 0) / rate


class ProgressLogger:
    """Prints ``step 120/4000 | 1.83 it/s | ETA 0:35:12 | loss/d 0.5382 loss/g 2.7654``.

    A line is printed at the first step after ``start_step`` (the first sign of life once the
    iteration has compiled), at every multiple of ``every`` and at ``total_steps``. Rate and
    ETA are measured over the recent lines only — from the oldest of the last ``window`` + 1
    lines to this one — so the compilation before the first step never enters them (the first
    line has no interval of its own to measure: ``-- it/s``), and a slow stretch (a sample's
    first compile, a checkpoint) drops out after ``window`` lines. Metrics are printed sorted
    by name.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        every: int,
        start_step: int = 0,
        window: int = 5,
        print_fn: Callable[[str], object] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.total_steps = total_steps
        self.every = every
        self.start_step = start_step
        self._print = print_fn
        self._clock = clock
        self._marks: collections.deque[tuple[int, float]] = collections.deque(maxlen=window + 1)

    def due(self, step: int) -> bool:
        """Whether ``step`` gets a line (the trainer fetches the metrics only then)."""
        return step == self.start_step + 1 or step % self.every == 0 or step == self.total_steps

    def log(self, step: int, metrics: Mapping[str, float]) -> bool:
        """Prints the line of ``step`` if it is due; returns whether it printed."""
        if not self.due(step):
            return False
        self._marks.append((step, self._clock()))
        estimate = rate_and_eta(self._marks, self.total_steps)
        if estimate is not None:
            speed, eta = f"{estimate[0]:.2f} it/s", _format_duration(estimate[1])
        else:  # the first line, or no time since the last: no rate to report
            speed, eta = "-- it/s", "--"
        terms = " ".join(f"{k} {_format_value(float(metrics[k]))}" for k in sorted(metrics))
        line = f"step {step}/{self.total_steps} | {speed} | ETA {eta}"
        if terms:
            line += f" | {terms}"
        self._print(line)
        return True


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] → uint8: clamp, (x+1)/2·255, truncate (SPEC §5).

    Computed in float32 like the authors' ``tensor2im`` (so 0 → 127, 0.999 → 254); NaN maps to
    0 rather than to whatever an undefined float→uint8 cast gives.
    """
    x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=-1.0)
    x = np.clip(x, -1.0, 1.0)
    return ((x + 1.0) / 2.0 * 255.0).astype(np.uint8)


def image_grid(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Images (H, W, 3) in [-1, 1] → one uint8 grid: each row left to right, rows top to bottom.

    The trainer passes one row per sample: infrared | translation | visible. Images of one row
    must share their height, and rows their total width.
    """
    if not rows or any(len(row) == 0 for row in rows):
        raise ValueError("image_grid needs at least one image in every row")
    strips = []
    for r, row in enumerate(rows):
        images = [to_uint8(image) for image in row]
        for c, image in enumerate(images):
            if image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"image [{r}][{c}] must be (H, W, 3), got {image.shape}")
        heights = {image.shape[0] for image in images}
        if len(heights) != 1:
            raise ValueError(f"images of row {r} differ in height: {sorted(heights)}")
        strips.append(np.concatenate(images, axis=1))
    widths = {strip.shape[1] for strip in strips}
    if len(widths) != 1:
        raise ValueError(f"grid rows differ in total width: {[s.shape[1] for s in strips]}")
    return np.concatenate(strips, axis=0)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes a uint8 (H, W, 3) or (H, W) image as PNG, creating the parent directory."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"save_png needs uint8 (H, W[, C]), got {image.dtype} {image.shape}")
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


def check_finite(metrics: Mapping[str, float], step: int) -> None:
    """Raises ``FloatingPointError`` naming every non-finite metric and the step."""
    bad = {}
    for name in sorted(metrics):
        value = float(metrics[name])
        if not math.isfinite(value):
            bad[name] = value
    if bad:
        terms = ", ".join(f"{name} = {value}" for name, value in bad.items())
        raise FloatingPointError(f"non-finite metrics at step {step}: {terms}")
