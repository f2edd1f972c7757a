"""Splits videos into folders of PNG frames.

Usage::

    python data_prep/video_to_frames.py VIDEO_OR_DIR OUT_DIR [--every N] [--size WxH]

* ``VIDEO_OR_DIR`` a video file (.mp4 .avi .mov .mkv .webm), or a folder searched recursively
  for them.
* A video ``clip.mp4`` is written to ``OUT_DIR/clip/000000.png, 000001.png, …``; for a folder
  the subfolders are kept: ``DIR/day/clip.mp4`` → ``OUT_DIR/day/clip/000000.png …``.
* ``--every N`` keeps every N-th frame (frames 0, N, 2N, …); the PNGs are numbered
  consecutively (000000, 000001, …) whatever N is.
* ``--size WxH`` resizes every frame (bicubic) to W×H; by default frames keep their size.
* Frames are RGB; gray (infrared) videos give gray-valued RGB PNGs.

A missing input, a folder without videos or a bad option stops with ``error: …`` (exit 2). A
video that cannot be opened, or breaks off before its first frame, is an ``error:`` line and
skipped. A video that breaks off later — a truncated or damaged file, or fewer frames decoded
than its container announces — keeps the frames decoded before the damage: a ``warning:`` line
gives both counts, and ``OUT_DIR/<video>/INCOMPLETE.txt`` records them, which
``data_prep/validate.py`` and ``data_prep/build.py`` report (the frames are usable; delete the
folder, or the marker, to decide otherwise). A later complete conversion into the same folder
removes the marker. The exit status is 1 when any video was skipped or incomplete, else 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cptrans_jax.data.layouts import INCOMPLETE_MARKER  # noqa: E402
from cptrans_jax.metrics import save_png  # noqa: E402
from cptrans_jax.video_io import (  # noqa: E402
    is_video,
    natural_key,
    read_video,
    resize_image,
    video_info,
)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 256x256, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got {text!r}")
    return w, h


def _every(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def find_videos(root: str) -> list[tuple[str, str]]:
    """(video path, output subfolder relative to OUT_DIR) for a video file or a folder."""
    if os.path.isfile(root):
        if not is_video(root):
            raise ValueError(f"{root} is not a video file (.mp4 .avi .mov .mkv .webm)")
        return [(root, os.path.splitext(os.path.basename(root))[0])]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort(key=natural_key)
        for name in sorted(filenames, key=natural_key):
            if is_video(name) and not name.startswith("."):
                path = os.path.join(dirpath, name)
                found.append((path, os.path.splitext(os.path.relpath(path, root))[0]))
    if not found:
        raise ValueError(f"no video files (.mp4 .avi .mov .mkv .webm) under {root}")
    return found


class IncompleteVideoError(ValueError):
    """A video broke off after some frames; those were written and the folder marked."""

    def __init__(self, reason: str, written: int, marker: str) -> None:
        self.reason, self.written, self.marker = reason, written, marker
        super().__init__(reason)


def convert(
    video: str,
    out_dir: str,
    *,
    every: int = 1,
    size: tuple[int, int] | None = None,
    print_fn: Callable[[str], object] = print,
) -> int:
    """Writes the kept frames of one video as ``out_dir/000000.png …``; returns their count.

    Raises ``ValueError`` for a video that yields no frame, and :class:`IncompleteVideoError`
    for one that breaks off after some: its frames are kept and ``out_dir/INCOMPLETE.txt`` says
    so.
    """
    info = video_info(video)
    total = info.num_frames
    start, written, index = time.monotonic(), 0, -1
    last_print = start
    marker = os.path.join(out_dir, INCOMPLETE_MARKER)
    try:
        for index, frame in enumerate(read_video(video)):
            if index % every:
                continue
            if size is not None:
                frame = resize_image(frame, *size)
            save_png(os.path.join(out_dir, f"{written:06d}.png"), frame)
            written += 1
            now = time.monotonic()
            if now - last_print >= 5.0:
                rate = written / (now - start)
                print_fn(f"  frame {index + 1}/{total or '?'} ({rate:.1f} frames/s)")
                last_print = now
    except ValueError as e:
        if not written:
            raise
        # The frames before the damage are real, consecutive frames: keep them, but never
        # silently — the marker travels with them to validate and build.
        kept = f"kept the first {index + 1} decoded frames as {written} PNGs"
        with open(marker, "w") as f:
            f.write(f"incomplete video: {e}; {kept}\n")
        raise IncompleteVideoError(str(e), written, marker) from e
    if os.path.exists(marker):  # this conversion was complete: an older marker is stale
        os.remove(marker)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Split videos into folders of PNG frames (OUT_DIR/<video stem>/000000.png …).",
        epilog="A folder input is searched recursively and its subfolders are kept.",
    )
    parser.add_argument("input", metavar="VIDEO_OR_DIR", help="a video file or a folder of them")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="where the frame folders go")
    parser.add_argument(
        "--every", type=_every, default=1, metavar="N", help="keep every N-th frame (default 1)"
    )
    parser.add_argument(
        "--size", type=_size, default=None, metavar="WxH", help="resize frames (bicubic) to W×H"
    )
    args = parser.parse_args(argv)
    if not os.path.exists(args.input):
        print(f"error: input {args.input} does not exist", file=sys.stderr)
        return 2
    try:
        videos = find_videos(args.input)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = incomplete = 0
    for i, (video, rel) in enumerate(videos, 1):
        out = os.path.join(args.out_dir, rel)
        t = time.monotonic()
        try:
            n = convert(video, out, every=args.every, size=args.size)
        except IncompleteVideoError as e:
            print(
                f"warning: {e.reason}; kept its {e.written} frames in {out}, marked by "
                f"{e.marker} (validate.py and build.py report it)",
                file=sys.stderr,
            )
            incomplete += 1
            continue
        except (ValueError, OSError) as e:
            print(f"error: {e}; skipped", file=sys.stderr)
            failed += 1
            continue
        print(f"[{i}/{len(videos)}] {video}: {n} frames -> {out} ({time.monotonic() - t:.1f} s)")
    if failed or incomplete:
        print(
            f"{len(videos) - failed - incomplete} of {len(videos)} videos complete, "
            f"{incomplete} incomplete (frames kept, marked), {failed} skipped",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
