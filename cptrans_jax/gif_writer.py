"""Animated GIF output (Pillow), with the interface of :class:`cptrans_jax.video_io.VideoWriter`.

GIF is for short comparison clips (the side-by-side videos of a README): every frame is reduced
to its own 256-colour palette (Pillow's median-cut quantiser, Floyd–Steinberg dithering) as it
arrives, and the palette images are kept until :meth:`GifWriter.close` writes the file, because
Pillow's GIF encoder writes all frames in one call. That is 1 byte per pixel per frame (a
3 × 256 × 256 side-by-side of 500 frames holds ~100 MB); for long videos write an ``.mp4``.
Frame durations are stored in whole 10 ms units (the GIF format's), so 25 fps is exact and
30 fps plays at 1000 / 30 ≈ 33 ms a frame. The animation loops forever.
"""

from __future__ import annotations

import os

import numpy as np


class GifWriter:
    """Streams uint8 RGB frames into an animated GIF; written at :meth:`close`."""

    def __init__(self, path: str | os.PathLike, fps: float) -> None:
        self.path = os.fspath(path)
        if not fps or fps <= 0:
            raise ValueError(f"{self.path}: fps must be positive, got {fps}")
        self.fps = float(fps)
        self.frames_written = 0
        self._frames: list = []
        self._size: tuple[int, int] | None = None

    def write(self, frame: np.ndarray) -> None:
        from PIL import Image

        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(
                f"{self.path}: frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}"
            )
        if self._size is None:
            self._size = frame.shape[:2]
        elif frame.shape[:2] != self._size:
            raise ValueError(
                f"{self.path}: frame {self.frames_written} is {frame.shape[1]}×{frame.shape[0]}, "
                f"the GIF is {self._size[1]}×{self._size[0]}; every frame needs the same size"
            )
        # Quantised now, so that what is held is 1 byte per pixel rather than 3.
        self._frames.append(Image.fromarray(frame).quantize(colors=256))
        self.frames_written += 1

    def close(self) -> None:
        if not self._frames:
            return
        frames, self._frames = self._frames, []
        duration = max(int(round(100.0 / self.fps)), 1) * 10  # ms, in the format's 10 ms units
        # Pillow takes the format from the suffix, which a temporary name keeps.
        frames[0].save(
            self.path,
            format="GIF",
            save_all=True,
            append_images=frames[1:],
            duration=duration,
            loop=0,
            optimize=False,
        )

    def abort(self) -> None:
        """Drops the frames without writing anything (the output is being discarded)."""
        self._frames = []

    def __enter__(self) -> GifWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
