"""Where frame commands (translate, fuse, side-by-side) write — a video or GIF, a folder of PNGs
or one image — never half.

:class:`FrameOutput` writes everything under a temporary name beside the output,
``.<name>.partial-<pid><suffix>`` (a file, keeping the suffix since PyAV picks the container
from it, or a folder), and renames it onto the output only when every frame is written:

* ``open()`` runs before any work: it checks the output path (not the input, not inside a file,
  writable), creates the missing parent folders and the temporary file or folder, so that a bad
  path fails at once, in one line;
* ``commit()`` renames a file over the output (``os.replace``: a reader sees the old file or the
  new one). A folder output that does not exist is renamed into place; one that exists is kept,
  and the new frames are moved into it, each replacing a file of the same name — the frames
  ``NNNNNN.png`` it holds that were not written now (the tail of a longer earlier translation)
  are left as they are and counted in a ``note:`` line;
* ``discard()``, on any failure, removes the temporary output and the parent folders ``open``
  created: nothing is left that was not there before, and an existing output is untouched.

Only a process killed outright (SIGKILL, a power cut) can leave a ``.<name>.partial-<pid>…``.
Problems raise :class:`OutputError` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil

import numpy as np

from cptrans_jax import video_io
from cptrans_jax.gif_writer import GifWriter
from cptrans_jax.metrics import save_png

KINDS = ("video", "image", "folder")

# The frames of a folder output.
FRAME_NAME = re.compile(r"\d{6}\.png")


class OutputError(ValueError):
    """An output path that cannot take the frames (or frames it cannot take): one line."""


def _os_reason(e: OSError) -> str:
    return e.strerror or str(e)


def _remove(path: str) -> None:
    """Removes a file or a folder tree, if it is there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        # Not there, or its folder is a file (an output path that open() refused).
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.remove(path)


class FrameOutput:
    """Translated frames into ``output`` (module docstring).

    Args:
        output: the path, as the user gave it (messages name it so).
        kind: ``"video"`` (a video_io suffix, or ``.gif``), ``"image"`` (one frame) or
            ``"folder"`` (``000000.png …``).
        input_path: the input, which the output must not be.
        fps: frame rate of a video.
        name: for a folder output of one input image, its file name there (else the frames are
            numbered).
    """

    def __init__(
        self, output: str, kind: str, input_path: str, fps: float, *, name: str | None = None
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.output = output
        self.path = os.path.abspath(output)
        self.kind = kind
        self.fps = fps
        self._name = name
        target = os.path.join(self.path, name) if kind == "folder" and name else self.path
        real_input = os.path.realpath(input_path)
        if real_input in (os.path.realpath(target), os.path.realpath(self.path)):
            raise OutputError(f"output {output} is the input {input_path}; give another path")
        parent, base = os.path.split(self.path)
        stem, ext = (base, "") if kind == "folder" else os.path.splitext(base)
        self.temp = os.path.join(parent, f".{stem}.partial-{os.getpid()}{ext}")
        self.frames = 0
        self._created: list[str] = []  # parent folders made by open(), outermost first
        self._video: video_io.VideoWriter | GifWriter | None = None
        self._size: tuple[int, int] | None = None  # a video's (H, W), from its first frame
        self._written: list[str] = []  # names inside a folder output

    def open(self) -> None:
        """Checks that the output can be written by creating its temporary file or folder."""
        parent = os.path.dirname(self.path)
        missing, existing = [], parent
        while not os.path.exists(existing):
            missing.append(existing)
            existing = os.path.dirname(existing)
        expected = "expected a path in a folder you can write to"
        if not os.path.isdir(existing):
            raise OutputError(
                f"output {self.output}: {existing} is a file, not a folder; {expected}"
            )
        try:
            for folder in reversed(missing):
                os.mkdir(folder)
                self._created.append(folder)
        except OSError as e:
            self.discard()
            raise OutputError(
                f"output {self.output}: cannot create the folder {e.filename or parent} "
                f"({_os_reason(e)}); {expected}"
            ) from None
        try:
            _remove(self.temp)  # left by an earlier process of the same id
            if self.kind == "folder":
                os.mkdir(self.temp)
            else:
                open(self.temp, "xb").close()  # the video writer opens it again
        except OSError as e:
            self.discard()
            raise OutputError(
                f"output {self.output}: cannot write in {parent} ({_os_reason(e)}); {expected}"
            ) from None
        if self.kind == "video":
            if self.temp.lower().endswith(".gif"):
                self._video = GifWriter(self.temp, self.fps)
            else:
                self._video = video_io.VideoWriter(self.temp, self.fps)

    def write(self, frame: np.ndarray) -> None:
        """Writes the next uint8 (H, W, 3) frame."""
        index = self.frames
        if self._video is not None:
            if self._size is None:
                self._size = frame.shape[:2]
            elif frame.shape[:2] != self._size:
                raise OutputError(
                    f"output {self.output}: frame {index} is {frame.shape[1]}×{frame.shape[0]} "
                    f"but the video is {self._size[1]}×{self._size[0]}; every frame of a video "
                    "needs one size (give --size N, or a folder output)"
                )
            self._video.write(frame)
        elif self.kind == "folder":
            name = self._name or f"{index:06d}.png"
            save_png(os.path.join(self.temp, name), frame)
            self._written.append(name)
        elif self.path.lower().endswith(".png"):
            save_png(self.temp, frame)
        else:
            from PIL import Image

            # Pillow takes the format from the suffix, which the temporary name keeps.
            Image.fromarray(frame).save(self.temp)
        self.frames += 1

    def commit(self) -> str | None:
        """Moves the finished output into place; returns a note about an existing folder."""
        if self._video is not None:
            self._video.close()
        if self.kind != "folder":
            os.replace(self.temp, self.path)
            return None
        if not os.path.isdir(self.path):
            try:
                os.rename(self.temp, self.path)
                return None
            except OSError:
                if not os.path.isdir(self.path):  # unless created meanwhile: then move in
                    raise
        for name in self._written:
            os.replace(os.path.join(self.temp, name), os.path.join(self.path, name))
        os.rmdir(self.temp)
        if self._name is not None:  # one image into a folder: other images are expected there
            return None
        written = set(self._written)
        others = sorted(
            n for n in os.listdir(self.path) if FRAME_NAME.fullmatch(n) and n not in written
        )
        if not others:
            return None
        return (
            f"note: {self.output} also holds {len(others)} frame(s) not from this translation "
            f"({others[0]} … {others[-1]}), left as they were"
        )

    def discard(self) -> None:
        """Removes the temporary output and the parent folders ``open`` created (if empty)."""
        if self._video is not None:
            with contextlib.suppress(Exception):
                # A GIF is written only at close: abort() drops its frames instead.
                getattr(self._video, "abort", self._video.close)()
            self._video = None
        _remove(self.temp)
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        self._created = []
