"""Translate infrared video, a folder of frames or one image with a trained generator.

Usage::

    python -m cptrans_jax.translate --checkpoint CKPT --input IN --output OUT \\
        [--size 256] [--output_size model|input] [--batch_size 8] [--fps F] \\
        [--compute_dtype float32|bfloat16]

``CKPT`` is one of (:mod:`cptrans_jax.generator_checkpoint` reads it)

* a training work directory (``<workdir>/config.json`` + ``<workdir>/checkpoints/<step>/``):
  the newest checkpoint that can be read is used — a damaged newer one (truncated or overwritten
  data files, a deleted manifest, ``_METADATA`` or ``state/``) is named in a ``warning:`` line
  and skipped, and nothing in the work directory is changed (the run may be live);
* one checkpoint, ``<workdir>/checkpoints/<step>``: that one (damaged, it is an error);
* the authors' PyTorch generator, ``latest_net_G.pth`` (its ngf and block count read from it).

Only G's parameters are read from an Orbax checkpoint (a partial restore onto one device; the
discriminator and optimizer states are never loaded). G's size comes from the work directory's
``config.json`` (``model.ngf``, ``model.n_blocks``), or from the parameter shapes when there is
none, and is checked against the checkpoint before anything is read.

``IN`` is a video file (.mp4 .avi .mov .mkv .webm), a folder of frames (.png .jpg .jpeg .bmp
.tif, natural order: ``frame_2`` before ``frame_10``) or one image. Gray (infrared) and RGB
input are both accepted; gray is replicated to 3 channels, as the authors' loader does.

``OUT``, by its suffix: a video file (.mp4/.mov/.mkv: H.264, .avi: MPEG-4, .webm: VP9; fps from
``--fps``, else the input video's, else 25), an image file (.png etc.; only for one input image)
or, without a suffix, a folder of PNG frames ``000000.png, 000001.png, …`` in input order (one
input image goes to ``OUT/<input stem>.png``).

No partial output (:mod:`cptrans_jax.frame_output`): everything is written under a temporary name
beside ``OUT`` (``.<name>.partial-<pid><suffix>``) and renamed to ``OUT`` only when every frame
is written; on any failure (or Ctrl-C, or SIGTERM) it is removed and an existing ``OUT`` is left
as it was. A folder ``OUT`` that already exists is kept: on success the new frames are moved into
it, replacing files of the same names, and a ``note:`` line counts the frames ``NNNNNN.png`` it
holds that this translation did not write (say, the tail of a longer earlier translation; left
as they are, as is anything else there). The output path is checked before any work (its folder
is created; it must be writable, not the input, and not a file where a folder is meant), so a bad
one fails at once.

Frame-size policy:

* ``--size N`` (default 256): every frame is resized (bicubic, Pillow — what the authors' test
  preprocessing ``Resize([256, 256], BICUBIC)`` does to its PIL frames) to N×N, aspect ratio
  not kept, and G runs at N×N.
* ``--size 0``: frames keep their native size; G runs on it with H and W rounded up to multiples
  of 4 by reflect-padding the bottom and right, and its output is cropped back.
* ``--output_size model`` (default): the output has the size G ran at (N×N, or native with
  ``--size 0``). ``--output_size input``: each output frame is resized (bicubic) back to its
  input frame's size (nothing to do with ``--size 0``).

Inference is one jitted function ``(params, uint8 frames) → uint8 frames``: [0, 255] → [-1, 1]
as ToTensor + Normalize(0.5, 0.5), G, then SPEC §5's quantisation (clamp, (x+1)/2·255, truncate).
Its batch has a fixed size (``--batch_size`` rounded up to a multiple of the local device count;
the last batch is padded), split over all local devices on a ``data`` mesh axis, so it compiles
once per frame size. Frames are streamed: one batch is read while the previous one runs, and a
long video is never held in memory. A progress line (frames done/total, frames/s, ETA) is
printed every few seconds. ``--compute_dtype bfloat16`` runs G's layers in bfloat16 (the same
float32 parameters; instance norm and the output in float32; :mod:`cptrans_jax.precision`) —
for TPUs and GPUs; the default float32 is what the parity tests check.

Bad input (a missing checkpoint or input, an unknown suffix, a checkpoint that is neither a work
directory nor a ``.pth`` or that has no readable checkpoint, a corrupt file, an output path that
cannot be written) ends with one ``error: …`` line and exit status 2; Ctrl-C and SIGTERM end it
with one line and status 130 / 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cptrans_jax import precision, video_io
from cptrans_jax.frame_output import FrameOutput, OutputError
from cptrans_jax.generator_checkpoint import GeneratorCheckpointError, load_generator
from cptrans_jax.metrics import _format_duration
from cptrans_jax.models.generator import Generator
from cptrans_jax.sharding import (
    DATA_AXIS,
    batch_sharding,
    local_data_mesh,
    place_replicated,
    replicated,
)

Params = Any

DEFAULT_FPS = 25.0
MIN_SIDE = 16  # G's two downsamplings and its reflect paddings need at least this many pixels
OUTPUT_SIZES = ("model", "input")

__all__ = [
    "GeneratorCheckpointError",
    "OutputError",
    "TranslateError",
    "TranslateResult",
    "load_generator",
    "main",
    "make_infer_fn",
    "translate",
]


class TranslateError(ValueError):
    """Bad input to ``translate``: the message says what was expected."""


# ---------------------------------------------------------------------------------- inference


@functools.lru_cache(maxsize=8)
def make_infer_fn(generator: Generator, mesh: jax.sharding.Mesh) -> Callable:
    """``jit((params, uint8 (B, H, W, 3)) → uint8 (B, H, W, 3))``, batch split over ``data``.

    Any H, W ≥ 16: they are reflect-padded (bottom, right) up to multiples of 4 and the output
    is cropped back. Cached per (generator, mesh), so repeated calls reuse one compilation.
    """
    rep, data = replicated(mesh), batch_sharding(mesh)

    def infer(params: Params, frames: jax.Array) -> jax.Array:
        h, w = frames.shape[1], frames.shape[2]
        # ToTensor then Normalize(0.5, 0.5), as the authors' test loader.
        x = (frames.astype(jnp.float32) / 255.0 - 0.5) / 0.5
        x = jnp.pad(x, ((0, 0), (0, -h % 4), (0, -w % 4), (0, 0)), mode="reflect")
        y = generator.apply({"params": params}, x)[:, :h, :w]
        # SPEC §5 (= metrics.to_uint8): clamp, (x+1)/2·255, truncate.
        y = jnp.clip(y, -1.0, 1.0)
        return ((y + 1.0) / 2.0 * 255.0).astype(jnp.uint8)

    return jax.jit(infer, in_shardings=(rep, data), out_shardings=data)


# ------------------------------------------------------------------------------ input/output


@dataclasses.dataclass
class _Source:
    frames: Iterator[np.ndarray]
    total: int | None
    fps: float | None
    kind: str  # "video" | "folder" | "image"
    path: str


def _open_source(path: str) -> _Source:
    if not os.path.exists(path):
        raise FileNotFoundError(f"input {path} does not exist")
    if os.path.isdir(path):
        files = video_io.list_frames(path)
        if not files:
            raise TranslateError(
                f"input folder {path} has no frames (expected "
                f"{' '.join(video_io.IMAGE_SUFFIXES)} files directly inside it)"
            )
        return _Source((video_io.read_image(f) for f in files), len(files), None, "folder", path)
    if video_io.is_video(path):
        info = video_io.video_info(path)
        return _Source(video_io.read_video(path), info.num_frames, info.fps, "video", path)
    if video_io.is_image(path):
        return _Source(iter([video_io.read_image(path)]), 1, None, "image", path)
    raise TranslateError(
        f"input {path}: unknown suffix; expected a video "
        f"({' '.join(video_io.VIDEO_SUFFIXES)}), an image "
        f"({' '.join(video_io.IMAGE_SUFFIXES)}) or a folder of frames"
    )


def _output_kind(output: str, source: _Source) -> tuple[str, str | None]:
    """("video" | "image" | "folder", the file name inside a folder for one input image)."""
    path = os.path.abspath(output)
    suffix = os.path.splitext(path)[1].lower()
    if os.path.isdir(path) or not suffix or output.endswith(("/", os.sep)):
        if os.path.exists(path) and not os.path.isdir(path):
            raise TranslateError(
                f"output {output} is an existing file; a folder output (no suffix) must be a "
                "folder or a new path"
            )
        if source.kind == "image":
            return "folder", os.path.splitext(os.path.basename(source.path))[0] + ".png"
        return "folder", None
    if video_io.is_video(path):
        return "video", None
    if video_io.is_image(path):
        if source.kind != "image":
            raise TranslateError(
                f"output {output} is an image file but the input is a {source.kind}; give a "
                "folder (no suffix) or a video file as the output"
            )
        return "image", None
    raise TranslateError(
        f"output {output}: unknown suffix {suffix!r}; expected a folder (no suffix), a "
        f"video ({' '.join(video_io.VIDEO_SUFFIXES)}) or, for one input image, an image "
        f"({' '.join(video_io.IMAGE_SUFFIXES)})"
    )


class _Progress:
    """``frames 640/1800 | 41.2 frames/s | ETA 0:00:28``, at most every ``every_s`` seconds."""

    def __init__(self, total, print_fn, every_s: float = 5.0, clock=time.monotonic) -> None:
        self.total, self._print, self.every_s, self._clock = total, print_fn, every_s, clock
        self.start = clock()
        self._last = self.start
        self._first: tuple[float, int] | None = None  # after the first batch (compilation)

    def rate(self, done: int) -> float | None:
        now = self._clock()
        if self._first is not None and done > self._first[1] and now > self._first[0]:
            return (done - self._first[1]) / (now - self._first[0])
        return done / (now - self.start) if now > self.start and done else None

    def update(self, done: int) -> None:
        now = self._clock()
        if self._first is None:
            self._first = (now, done)
        if now - self._last < self.every_s:
            return
        self._last = now
        rate = self.rate(done)
        total = self.total if self.total is not None else "?"
        eta = "--"
        if rate and self.total is not None:
            eta = _format_duration(max(self.total - done, 0) / rate)
        speed = f"{rate:.1f} frames/s" if rate else "-- frames/s"
        self._print(f"frames {done}/{total} | {speed} | ETA {eta}")


@dataclasses.dataclass(frozen=True)
class TranslateResult:
    frames: int
    output: str
    seconds: float
    description: str  # which generator was used


def _batches(frames: Iterator[np.ndarray], size: int, batch: int):
    """Yields lists of (preprocessed frame, input (H, W)) of one shape, at most ``batch`` long."""
    group: list[tuple[np.ndarray, tuple[int, int]]] = []
    for frame in frames:
        hw = frame.shape[:2]
        x = video_io.resize_image(frame, size, size) if size else frame
        if min(x.shape[:2]) < MIN_SIDE:
            raise TranslateError(
                f"frame of {x.shape[1]}×{x.shape[0]} is too small for G (at least "
                f"{MIN_SIDE}×{MIN_SIDE}); use --size"
            )
        if group and (x.shape != group[0][0].shape or len(group) == batch):
            yield group
            group = []
        group.append((x, hw))
    if group:
        yield group


def translate(
    checkpoint: str | os.PathLike,
    input: str | os.PathLike,  # noqa: A002 - the CLI's name
    output: str | os.PathLike,
    *,
    size: int = 256,
    output_size: str = "model",
    batch_size: int = 8,
    fps: float | None = None,
    compute_dtype: str = "float32",
    print_fn: Callable[[str], object] = print,
    progress_every_s: float = 5.0,
) -> TranslateResult:
    """Translates ``input`` into ``output`` with the generator of ``checkpoint`` (module doc).

    ``output`` appears only complete: it is written under a temporary name and renamed at the
    end; on any failure nothing is left at ``output`` that was not there before.

    Raises:
        FileNotFoundError: the checkpoint or the input does not exist.
        ValueError (``TranslateError``, ``GeneratorCheckpointError``, ``OutputError``,
            ``CheckpointMismatchError``): anything else wrong with the arguments or the files.
    """
    input_path, output = os.fspath(input), os.fspath(output)
    if size < 0 or (size and size < MIN_SIDE):
        raise TranslateError(f"--size must be 0 (native) or at least {MIN_SIDE}, got {size}")
    if output_size not in OUTPUT_SIZES:
        raise TranslateError(f"--output_size must be one of {OUTPUT_SIZES}, got {output_size!r}")
    if batch_size < 1:
        raise TranslateError(f"--batch_size must be >= 1, got {batch_size}")
    if fps is not None and fps <= 0:
        raise TranslateError(f"--fps must be positive, got {fps}")
    if compute_dtype not in precision.COMPUTE_DTYPES:
        choices = tuple(precision.COMPUTE_DTYPES)
        raise TranslateError(f"--compute_dtype must be one of {choices}, got {compute_dtype!r}")
    # Input and output are checked before the (slower) checkpoint load so that a typo fails at
    # once; the output's temporary file or folder is created here.
    source = _open_source(input_path)
    try:
        kind, name = _output_kind(output, source)
        sink = FrameOutput(output, kind, input_path, fps or source.fps or DEFAULT_FPS, name=name)
        sink.open()
    except BaseException:
        _close(source.frames)
        raise
    try:
        result = _run(checkpoint, source, sink, size, output_size, batch_size, compute_dtype,
                      print_fn, progress_every_s)  # fmt: skip
        note = sink.commit()
    except BaseException:
        sink.discard()
        raise
    finally:
        _close(source.frames)
    if note:
        print_fn(note)
    print_fn(
        f"translated {result.frames} frames in {_format_duration(result.seconds)} "
        f"({result.frames / max(result.seconds, 1e-9):.1f} frames/s) -> {output}"
    )
    return TranslateResult(result.frames, output, result.seconds, result.description)


def _close(frames: Iterator[np.ndarray]) -> None:
    """Closes a frame generator (and so the video file it reads)."""
    close = getattr(frames, "close", None)
    if close is not None:
        close()


def _run(
    checkpoint: str | os.PathLike,
    source: _Source,
    sink: FrameOutput,
    size: int,
    output_size: str,
    batch_size: int,
    compute_dtype: str,
    print_fn: Callable[[str], object],
    progress_every_s: float,
) -> TranslateResult:
    """Loads G and writes every translated frame of ``source`` into ``sink``."""
    generator, params, description = load_generator(checkpoint)
    # Same float32 params; only the computation dtype changes (cptrans_jax.precision).
    generator = generator.clone(dtype=precision.compute_dtype(compute_dtype))
    mesh = local_data_mesh()
    n_dev = mesh.shape[DATA_AXIS]
    batch = -(-batch_size // n_dev) * n_dev
    infer = make_infer_fn(generator, mesh)
    params = place_replicated(params, mesh)
    data = batch_sharding(mesh)
    print_fn(
        f"translating {source.path} ({source.total or '?'} frames) with G(ngf={generator.ngf}, "
        f"n_blocks={generator.n_blocks}) from {description}; batch {batch} on {n_dev} device(s)"
        + ("" if compute_dtype == "float32" else f", computing in {compute_dtype}")
    )
    progress = _Progress(source.total, print_fn, progress_every_s)

    def emit(pending) -> None:
        out, group = pending
        out = np.asarray(out)
        for y, (_, hw) in zip(out[: len(group)], group, strict=False):
            if output_size == "input":
                y = video_io.resize_image(y, hw[1], hw[0])
            sink.write(y)
        progress.update(sink.frames)

    pending = None
    for group in _batches(source.frames, size, batch):
        x = np.zeros((batch, *group[0][0].shape), np.uint8)
        for i, (frame, _) in enumerate(group):
            x[i] = frame
        # Dispatch is asynchronous: the previous batch is written while this one runs.
        result = infer(params, jax.device_put(x, data))
        if pending is not None:
            emit(pending)
        pending = (result, group)
    if pending is not None:
        emit(pending)
    if sink.frames == 0:
        raise TranslateError(f"input {source.path} has no frames")
    return TranslateResult(sink.frames, sink.output, time.monotonic() - progress.start, description)


# ---------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    doc = __doc__.split("Frame-size policy:")[1].split("Inference is")[0].strip()
    doc = doc.replace("``", "")
    parser = argparse.ArgumentParser(
        prog="python -m cptrans_jax.translate",
        description="Translate infrared video / frames / an image into visible with a trained "
        "CPTrans/ROMA generator.",
        epilog="Frame-size policy:\n\n" + doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="training work directory (its newest readable checkpoint), "
        "<workdir>/checkpoints/<step>, or the authors' latest_net_G.pth",
    )
    parser.add_argument(
        "--input", required=True, help="video file, folder of frames (natural order) or image"
    )
    parser.add_argument(
        "--output",
        required=True,
        help="video file (.mp4 .avi .mov .mkv .webm), folder of PNGs (no suffix: 000000.png …), "
        "or an image file for one input image",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=256,
        help="resize frames to SIZE×SIZE (bicubic) before G, like the authors' test "
        "preprocessing (default 256); 0 keeps the native size (padded to multiples of 4)",
    )
    parser.add_argument(
        "--output_size",
        choices=OUTPUT_SIZES,
        default="model",
        help="model: output at the size G ran at (default); input: resized back to each "
        "input frame's size",
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="frames per step, rounded up to a multiple of the device count (default 8)",
    )
    parser.add_argument(
        "--compute_dtype",
        choices=tuple(precision.COMPUTE_DTYPES),
        default="float32",
        help="G's computation dtype (default float32); bfloat16 is faster on TPUs and recent "
        "GPUs, not on CPUs, and its frames differ from float32's by a few levels of 255",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="frame rate of a video output (default: the input video's, else 25)",
    )
    return parser


class _TerminatedError(BaseException):
    """SIGTERM, raised in the main thread so that the temporary output is removed (a
    BaseException, so that no `except Exception` on the way takes it for a failure)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _TerminatedError()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        translate(
            args.checkpoint,
            args.input,
            args.output,
            size=args.size,
            output_size=args.output_size,
            batch_size=args.batch_size,
            compute_dtype=args.compute_dtype,
            fps=args.fps,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; nothing written to {args.output}", file=sys.stderr)
        return 130
    except _TerminatedError:
        print(f"error: terminated; nothing written to {args.output}", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
