"""What frame commands read and where their frames go: shared by translate, fuse and the
side-by-side output.

* :func:`open_source` — a video (``.mp4 .avi .mov .mkv .webm``), a folder of frames (natural
  order) or one image, as a stream of uint8 (H, W, 3) frames with its frame count and fps when
  known (:mod:`cptrans_jax.video_io` decodes them).
* :func:`output_kind` — which kind of output a path asks for (``"video"``, ``"image"`` or
  ``"folder"``), by its suffix, checked against the input's kind; the output itself is written
  by :class:`cptrans_jax.frame_output.FrameOutput`. ``.gif`` is a video output (written by
  :mod:`cptrans_jax.gif_writer`), not an input.
* :class:`Progress` — the ``frames 640/1800 | 41.2 frames/s | ETA 0:00:28`` line of long jobs.

Problems raise :class:`FrameInputError` (a ``ValueError``) or ``FileNotFoundError``, each with a
one-line message saying what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator

import numpy as np

from cptrans_jax import video_io
from cptrans_jax.metrics import _format_duration

# Video outputs: what video_io writes, plus animated GIF (Pillow).
OUTPUT_VIDEO_SUFFIXES = (*video_io.VIDEO_SUFFIXES, ".gif")


class FrameInputError(ValueError):
    """An input or output path of the wrong kind: the message says what was expected."""


def is_video_output(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a video output by its suffix (video_io's, or ``.gif``)."""
    return os.path.splitext(os.fspath(path))[1].lower() in OUTPUT_VIDEO_SUFFIXES


@dataclasses.dataclass
class Source:
    """A stream of uint8 (H, W, 3) frames and what is known about it."""

    frames: Iterator[np.ndarray]
    total: int | None  # exact for a folder or an image; a video's is what its container says
    fps: float | None
    kind: str  # "video" | "folder" | "image"
    path: str

    def close(self) -> None:
        """Closes the frame generator (and so the video file it reads)."""
        close = getattr(self.frames, "close", None)
        if close is not None:
            close()


def open_source(path: str | os.PathLike, option: str = "input") -> Source:
    """Opens a video, a folder of frames or one image (module docstring).

    ``option`` names the argument in messages (``input``, ``--infrared`` …).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{option} {path} does not exist")
    if os.path.isdir(path):
        files = video_io.list_frames(path)
        if not files:
            raise FrameInputError(
                f"{option} folder {path} has no frames (expected "
                f"{' '.join(video_io.IMAGE_SUFFIXES)} files directly inside it)"
            )
        return Source((video_io.read_image(f) for f in files), len(files), None, "folder", path)
    if video_io.is_video(path):
        info = video_io.video_info(path)
        return Source(video_io.read_video(path), info.num_frames, info.fps, "video", path)
    if video_io.is_image(path):
        return Source(iter([video_io.read_image(path)]), 1, None, "image", path)
    raise FrameInputError(
        f"{option} {path}: unknown suffix; expected a video "
        f"({' '.join(video_io.VIDEO_SUFFIXES)}), an image "
        f"({' '.join(video_io.IMAGE_SUFFIXES)}) or a folder of frames"
    )


def output_kind(output: str, source: Source, option: str = "output") -> tuple[str, str | None]:
    """("video" | "image" | "folder", the file name inside a folder for one input image)."""
    path = os.path.abspath(output)
    suffix = os.path.splitext(path)[1].lower()
    if os.path.isdir(path) or not suffix or output.endswith(("/", os.sep)):
        if os.path.exists(path) and not os.path.isdir(path):
            raise FrameInputError(
                f"{option} {output} is an existing file; a folder output (no suffix) must be a "
                "folder or a new path"
            )
        if source.kind == "image":
            return "folder", os.path.splitext(os.path.basename(source.path))[0] + ".png"
        return "folder", None
    if is_video_output(path):
        return "video", None
    if video_io.is_image(path):
        if source.kind != "image":
            raise FrameInputError(
                f"{option} {output} is an image file but the input is a {source.kind}; give a "
                "folder (no suffix) or a video file as the output"
            )
        return "image", None
    raise FrameInputError(
        f"{option} {output}: unknown suffix {suffix!r}; expected a folder (no suffix), a "
        f"video ({' '.join(OUTPUT_VIDEO_SUFFIXES)}) or, for one input image, an image "
        f"({' '.join(video_io.IMAGE_SUFFIXES)})"
    )


class Progress:
    """``frames 640/1800 | 41.2 frames/s | ETA 0:00:28``, at most every ``every_s`` seconds.

    The rate is measured from the first update on, so that the first batch (which compiles)
    does not distort it.
    """

    def __init__(
        self,
        total: int | None,
        print_fn: Callable[[str], object],
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "frames",
    ) -> None:
        self.total, self._print, self.every_s, self._clock = total, print_fn, every_s, clock
        self.unit = unit
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
        speed = f"{rate:.1f} {self.unit}/s" if rate else f"-- {self.unit}/s"
        self._print(f"{self.unit} {done}/{total} | {speed} | ETA {eta}")
