"""Fuse infrared video with its visible translation, frame by frame.

Usage::

    python -m cptrans_jax.fuse --infrared IN --visible TRANSLATION --output OUT \\
        [--method ycbcr-max|ycbcr-weighted|laplacian] [--ir_weight 0.5] [--levels 4] \\
        [--size infrared|visible] [--batch_size 8] [--fps F]

``IN`` and ``TRANSLATION`` are each a video (.mp4 .avi .mov .mkv .webm), a folder of frames
(natural order) or one image (:mod:`cptrans_jax.frame_io`). Frames are matched by index: the
k-th infrared frame with the k-th visible frame, so both must have the same number of frames;
otherwise the command stops, naming both counts, and writes nothing. (translate's folder output
``000000.png …`` lines up with its input's order, so a translation fuses with its source.)

Sizes are reconciled per frame pair: ``--size infrared`` (default) resizes the visible frame
(bicubic, Pillow) to the infrared frame's size, so the fusion keeps the infrared's resolution;
``--size visible`` resizes the infrared frame to the visible one's instead.

Methods (:mod:`cptrans_jax.fusion`): ``ycbcr-max`` (default; the visible colour with the
brighter of the two luminances), ``ycbcr-weighted`` (``--ir_weight`` · infrared + (1 − weight)
· visible luminance) and ``laplacian`` (Laplacian-pyramid fusion of the luminances,
``--levels``); all keep the visible frame's chroma.

``OUT`` is a video (by suffix, also an animated ``.gif``; fps from ``--fps``, else the infrared
video's, else the visible video's, else 25), a folder of PNGs ``000000.png …`` (no suffix) or,
for one image pair, an image. It is written atomically (:mod:`cptrans_jax.frame_output`):
nothing appears at ``OUT`` unless every frame was fused, and the path is checked before any
work. The fusion is one jitted function over a fixed batch (``--batch_size``, rounded up to a
multiple of the local device count) split over the local devices; frames are streamed, with a
progress line.

Bad input (a missing input, an unknown suffix, mismatched frame counts, an output that cannot be
written) ends with one ``error: …`` line and exit status 2; Ctrl-C and SIGTERM with one line and
status 130 / 143, nothing written.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np

from cptrans_jax import frame_io, video_io
from cptrans_jax.cli import run_command
from cptrans_jax.frame_output import FrameOutput
from cptrans_jax.fusion import DEFAULT_LEVELS, METHODS, FusionConfig, make_fuse_fn
from cptrans_jax.metrics import _format_duration
from cptrans_jax.sharding import DATA_AXIS, batch_sharding, local_data_mesh

DEFAULT_FPS = 25.0
SIZES = ("infrared", "visible")


class FuseError(frame_io.FrameInputError):
    """Bad input to ``fuse``: the message says what was expected."""


@dataclasses.dataclass(frozen=True)
class FuseResult:
    frames: int
    output: str
    seconds: float


def _pairs(
    infrared: frame_io.Source, visible: frame_io.Source, size: str
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(infrared, visible) frames of one size, matched by index; a count mismatch is an error."""
    end = object()
    for k, (ir, vis) in enumerate(
        itertools.zip_longest(infrared.frames, visible.frames, fillvalue=end)
    ):
        if ir is end or vis is end:
            short, other = ("--infrared", "--visible") if ir is end else ("--visible", "--infrared")
            paths = {"--infrared": infrared.path, "--visible": visible.path}
            raise FuseError(
                f"{short} {paths[short]} has {k} frames but {other} {paths[other]} has more; "
                "expected the same number of frames (they are matched by index)"
            )
        if ir.shape != vis.shape:
            if size == "infrared":
                vis = video_io.resize_image(vis, ir.shape[1], ir.shape[0])
            else:
                ir = video_io.resize_image(ir, vis.shape[1], vis.shape[0])
        yield ir, vis


def fuse(
    infrared: str | os.PathLike,
    visible: str | os.PathLike,
    output: str | os.PathLike,
    *,
    config: FusionConfig | None = None,
    size: str = "infrared",
    batch_size: int = 8,
    fps: float | None = None,
    print_fn: Callable[[str], object] = print,
    progress_every_s: float = 5.0,
) -> FuseResult:
    """Fuses ``infrared`` with ``visible`` into ``output`` (module docstring).

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError (``FuseError``, ``OutputError``): anything else wrong with the arguments or
            the files, in one line.
    """
    config = config or FusionConfig()
    infrared, visible, output = os.fspath(infrared), os.fspath(visible), os.fspath(output)
    if size not in SIZES:
        raise FuseError(f"--size must be one of {', '.join(SIZES)}, got {size!r}")
    if batch_size < 1:
        raise FuseError(f"--batch_size must be >= 1, got {batch_size}")
    if fps is not None and fps <= 0:
        raise FuseError(f"--fps must be positive, got {fps}")
    ir = frame_io.open_source(infrared, "--infrared")
    sources = [ir]
    sink = None
    try:
        vis = frame_io.open_source(visible, "--visible")
        sources.append(vis)
        # Folders and images know their counts exactly: a mismatch fails before any work (a
        # video's header count may be off by one, so videos are checked as they are read).
        if ir.kind != "video" and vis.kind != "video" and ir.total != vis.total:
            raise FuseError(
                f"--infrared {infrared} has {ir.total} frames but --visible {visible} has "
                f"{vis.total}; expected the same number of frames (they are matched by index)"
            )
        if os.path.realpath(output) == os.path.realpath(visible):
            raise FuseError(f"--output {output} is the --visible input; give another path")
        kind, name = frame_io.output_kind(output, ir, "--output")
        rate = fps or ir.fps or vis.fps or DEFAULT_FPS
        sink = FrameOutput(output, kind, infrared, rate, name=name)
        sink.open()
    except BaseException:
        for source in sources:
            source.close()
        raise
    try:
        seconds = _run(ir, vis, sink, config, size, batch_size, print_fn, progress_every_s)
        note = sink.commit()
    except BaseException:
        sink.discard()
        raise
    finally:
        for source in sources:
            source.close()
    if note:
        print_fn(note)
    print_fn(
        f"fused {sink.frames} frames ({config.method}) in {_format_duration(seconds)} "
        f"({sink.frames / max(seconds, 1e-9):.1f} frames/s) -> {output}"
    )
    return FuseResult(sink.frames, output, seconds)


def _run(ir, vis, sink, config, size, batch_size, print_fn, progress_every_s) -> float:
    mesh = local_data_mesh()
    n_dev = mesh.shape[DATA_AXIS]
    batch = -(-batch_size // n_dev) * n_dev
    fuse_fn, data = make_fuse_fn(config, mesh), batch_sharding(mesh)
    total = ir.total if ir.kind != "video" else (ir.total or vis.total)
    print_fn(
        f"fusing {ir.path} with {vis.path} ({total or '?'} frames, {config.method}); "
        f"batch {batch} on {n_dev} device(s)"
    )
    progress = frame_io.Progress(total, print_fn, progress_every_s)

    def emit(pending) -> None:
        out, count = pending
        for y in np.asarray(out)[:count]:
            sink.write(y)
        progress.update(sink.frames)

    pending, group = None, []

    def dispatch() -> None:
        nonlocal pending
        x_ir = np.zeros((batch, *group[0][0].shape), np.uint8)
        x_vis = np.zeros_like(x_ir)
        for i, (a, b) in enumerate(group):
            x_ir[i], x_vis[i] = a, b
        # Asynchronous: the previous batch is written while this one runs.
        result = fuse_fn(jax.device_put(x_ir, data), jax.device_put(x_vis, data))
        if pending is not None:
            emit(pending)
        pending = (result, len(group))

    for pair in _pairs(ir, vis, size):
        if group and (pair[0].shape != group[0][0].shape or len(group) == batch):
            dispatch()
            group = []
        group.append(pair)
    if group:
        dispatch()
    if pending is not None:
        emit(pending)
    if sink.frames == 0:
        raise FuseError(f"--infrared {ir.path} has no frames")
    return time.monotonic() - progress.start


# ---------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cptrans_jax.fuse",
        description="Fuse infrared frames with their visible translation (frames matched by "
        "index; the visible colour is kept, the luminances are fused).",
    )
    p.add_argument("--infrared", required=True, help="video, folder of frames or image")
    p.add_argument("--visible", required=True, help="the translation: video, folder or image")
    p.add_argument(
        "--output",
        required=True,
        help="video (.mp4 .avi .mov .mkv .webm .gif), folder of PNGs (no suffix) or, for one "
        "image pair, an image",
    )
    p.add_argument(
        "--method",
        choices=METHODS,
        default="ycbcr-max",
        help="ycbcr-max (default): max of the luminances; ycbcr-weighted: --ir_weight blend; "
        "laplacian: Laplacian-pyramid fusion of the luminances",
    )
    p.add_argument(
        "--ir_weight", type=float, default=0.5, help="infrared weight for ycbcr-weighted (0.5)"
    )
    p.add_argument(
        "--levels",
        type=int,
        default=DEFAULT_LEVELS,
        help=f"pyramid levels for laplacian ({DEFAULT_LEVELS})",
    )
    p.add_argument(
        "--size",
        choices=SIZES,
        default="infrared",
        help="infrared (default): the visible frame is resized to the infrared's size; visible: "
        "the other way round",
    )
    p.add_argument("--batch_size", type=int, default=8, help="frames per step (default 8)")
    p.add_argument("--fps", type=float, default=None, help="frame rate of a video output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> None:
        fuse(
            args.infrared,
            args.visible,
            args.output,
            config=FusionConfig(args.method, args.ir_weight, args.levels),
            size=args.size,
            batch_size=args.batch_size,
            fps=args.fps,
        )

    return run_command(body, not_written=f"nothing written to {args.output}", catch_sigterm=True)


if __name__ == "__main__":
    sys.exit(main())
