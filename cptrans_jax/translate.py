"""Translate infrared video, a folder of frames or one image with a trained generator.

Usage::

    python -m cptrans_jax.translate --checkpoint CKPT --input IN --output OUT \\
        [--size 256] [--output_size model|input] [--batch_size 8] [--fps F] \\
        [--fuse METHOD [--fuse_output FUSED]] [--side_by_side SBS [--panel_labels A,B,C]] \\
        [--compute_dtype float32|bfloat16]

``--fuse`` and ``--side_by_side`` write the fusion of the infrared with its translation and an
infrared | translation (| fusion) comparison video in the same pass
(:mod:`cptrans_jax.translate_extras`).

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
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cptrans_jax import frame_io, precision, video_io
from cptrans_jax.cli import run_command
from cptrans_jax.frame_output import FrameOutput, OutputError
from cptrans_jax.fusion import DEFAULT_LEVELS, METHODS
from cptrans_jax.generator_checkpoint import GeneratorCheckpointError, load_generator
from cptrans_jax.metrics import _format_duration
from cptrans_jax.models.generator import Generator, conv_impl_for
from cptrans_jax.sharding import (
    DATA_AXIS,
    batch_sharding,
    local_data_mesh,
    place_replicated,
    replicated,
)
from cptrans_jax.translate_extras import ExtraOptions, ExtraOutputs

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


class TranslateError(frame_io.FrameInputError):
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

# Inputs, output kinds and the progress line are shared with fuse (cptrans_jax.frame_io).
_Source = frame_io.Source
_Progress = frame_io.Progress


def _open_source(path: str) -> _Source:
    try:
        return frame_io.open_source(path)
    except frame_io.FrameInputError as e:
        raise TranslateError(str(e)) from None


def _output_kind(output: str, source: _Source) -> tuple[str, str | None]:
    try:
        return frame_io.output_kind(output, source)
    except frame_io.FrameInputError as e:
        raise TranslateError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class TranslateResult:
    frames: int
    output: str
    seconds: float
    description: str  # which generator was used


def _batches(frames: Iterator[np.ndarray], size: int, batch: int):
    """Yields lists of (preprocessed frame, input frame) of one shape, at most ``batch`` long."""
    group: list[tuple[np.ndarray, np.ndarray]] = []
    for frame in frames:
        x = video_io.resize_image(frame, size, size) if size else frame
        if min(x.shape[:2]) < MIN_SIDE:
            raise TranslateError(
                f"frame of {x.shape[1]}×{x.shape[0]} is too small for G (at least "
                f"{MIN_SIDE}×{MIN_SIDE}); use --size"
            )
        if group and (x.shape != group[0][0].shape or len(group) == batch):
            yield group
            group = []
        group.append((x, frame))
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
    extras: ExtraOptions | None = None,
    compute_dtype: str = "float32",
    print_fn: Callable[[str], object] = print,
    progress_every_s: float = 5.0,
) -> TranslateResult:
    """Translates ``input`` into ``output`` with the generator of ``checkpoint`` (module doc).

    ``output`` appears only complete: it is written under a temporary name and renamed at the
    end; on any failure nothing is left at ``output`` that was not there before. ``extras``:
    the fusion and side-by-side outputs (:mod:`cptrans_jax.translate_extras`), written alike.

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
    sink = None
    try:
        kind, name = _output_kind(output, source)
        sink = FrameOutput(output, kind, input_path, fps or source.fps or DEFAULT_FPS, name=name)
        extra = ExtraOutputs(extras or ExtraOptions(), source, output, sink.fps)
        sink.open()
        extra.open()
    except BaseException:
        if sink is not None:
            sink.discard()
        _close(source.frames)
        raise
    try:
        result = _run(checkpoint, source, sink, extra, size, output_size, batch_size,
                      compute_dtype, print_fn, progress_every_s)  # fmt: skip
        lines = [*extra.commit(), sink.commit()]
    except BaseException:
        extra.discard()
        sink.discard()
        raise
    finally:
        _close(source.frames)
    for line in lines:
        if line:
            print_fn(line)
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
    extra: ExtraOutputs,
    size: int,
    output_size: str,
    batch_size: int,
    compute_dtype: str,
    print_fn: Callable[[str], object],
    progress_every_s: float,
) -> TranslateResult:
    """Loads G and writes every translated frame of ``source`` into ``sink`` (and ``extra``)."""
    generator, params, description = load_generator(checkpoint)
    mesh = local_data_mesh()
    # The fastest way to compute G's convolutions on these devices (same function, same params).
    platform = mesh.devices.flat[0].platform
    # Same float32 params; only the computation dtype changes (cptrans_jax.precision).
    generator = generator.clone(
        conv_impl=conv_impl_for("auto", platform), dtype=precision.compute_dtype(compute_dtype)
    )
    n_dev = mesh.shape[DATA_AXIS]
    batch = -(-batch_size // n_dev) * n_dev
    infer = extra.infer_fn(generator, mesh, make_infer_fn(generator, mesh))
    params = place_replicated(params, mesh)
    data = batch_sharding(mesh)
    print_fn(
        f"translating {source.path} ({source.total or '?'} frames) with G(ngf={generator.ngf}, "
        f"n_blocks={generator.n_blocks}) from {description}; batch {batch} on {n_dev} device(s)"
        + ("" if compute_dtype == "float32" else f", computing in {compute_dtype}")
    )
    progress = _Progress(source.total, print_fn, progress_every_s)

    def emit(pending) -> None:
        (out, fused), group = pending
        out, fused = np.asarray(out), None if fused is None else np.asarray(fused)
        for i, (x, frame) in enumerate(group):
            y, f = out[i], None if fused is None else fused[i]
            if output_size == "input":
                x, (h, w) = frame, frame.shape[:2]
                y = video_io.resize_image(y, w, h)
                f = None if f is None else video_io.resize_image(f, w, h)
            sink.write(y)
            extra.write(x, y, f)
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
    extra = parser.add_argument_group(
        "fusion and side-by-side outputs (written like --output: whole or not at all)"
    )
    extra.add_argument(
        "--fuse",
        choices=METHODS,
        default=None,
        help="also fuse each infrared frame with its translation, on the device after G, at the "
        "size G ran at: ycbcr-max / ycbcr-weighted (visible colour, max or weighted luminance) "
        "or laplacian (Laplacian-pyramid luminance fusion)",
    )
    extra.add_argument("--fuse_output", default=None, help="where the fusion goes (as --output)")
    extra.add_argument(
        "--fuse_weight", type=float, default=0.5, help="infrared weight of ycbcr-weighted (0.5)"
    )
    extra.add_argument(
        "--fuse_levels", type=int, default=DEFAULT_LEVELS, help="laplacian: pyramid levels (4)"
    )
    extra.add_argument(
        "--side_by_side",
        default=None,
        help="also write infrared | translation (| fusion with --fuse) side by side: a video "
        "(.mp4 …), an animated .gif or a folder",
    )
    extra.add_argument(
        "--panel_labels",
        default=None,
        help='labels over the side-by-side panels, comma-separated: "infrared,translation,fusion"',
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    extras = ExtraOptions(
        args.fuse,
        args.fuse_output,
        args.fuse_weight,
        args.fuse_levels,
        args.side_by_side,
        args.panel_labels,
    )  # fmt: skip

    def body() -> None:
        translate(
            args.checkpoint,
            args.input,
            args.output,
            size=args.size,
            output_size=args.output_size,
            batch_size=args.batch_size,
            compute_dtype=args.compute_dtype,
            fps=args.fps,
            extras=extras,
        )

    return run_command(body, not_written=f"nothing written to {args.output}", catch_sigterm=True)


if __name__ == "__main__":
    sys.exit(main())
