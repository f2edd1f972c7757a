"""Small manual-download trees in each accepted layout, whose pixels say which frame they are.

Every frame is 8×8. Infrared frames are gray; visible frames are RGB. A frame's identity is its
red value ``frame_value(domain, video, frame)`` everywhere, so a decoded (even resized) frame
tells which record it came from; visible frames carry ``255 - value`` in blue to show colour
survives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 8
SPLITS = {
    "trainA": (0, "train"),
    "trainB": (1, "train"),
    "testA": (0, "test"),
    "testB": (1, "test"),
}


def frame_value(domain: int, video: int, frame: int) -> int:
    return 100 * domain + 10 * video + frame


def frame_pixels(domain: int, video: int, frame: int) -> np.ndarray:
    v = frame_value(domain, video, frame)
    if domain == 0:
        return np.full((SIZE, SIZE), v, np.uint8)
    rgb = np.empty((SIZE, SIZE, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = v, 128, 255 - v
    return rgb


def identity(frame: np.ndarray) -> int:
    """The red value of a pipeline frame in [-1, 1] (or uint8), as an int."""
    x = np.asarray(frame, np.float64)
    if x.max() <= 1.0:
        x = (x + 1.0) * 127.5
    return int(round(float(np.median(x[..., 0]))))


def write_packed(scene_dir: Path, k: int, files: dict[str, int]) -> None:
    """``files[folder]`` packed files per folder; file i holds frames i … i+k−1 (overlapping, as
    the authors' consecutive pairs do), the first in a sub-folder to test recursion."""
    for folder, n in files.items():
        domain = SPLITS[folder][0]
        for i in range(n):
            strip = np.concatenate([frame_pixels(domain, i, i + j) for j in range(k)], axis=1)
            path = scene_dir / folder / ("sub" if i == 0 else "") / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(strip).save(path)


def write_frames(scene_dir: Path, videos: dict[str, list[int]]) -> None:
    """``videos[folder]`` lists frame counts per video; frames named ``f_<i>.png`` (unpadded, so
    only a natural sort orders them)."""
    for folder, counts in videos.items():
        domain = SPLITS[folder][0]
        for v, n in enumerate(counts):
            d = scene_dir / folder / f"video{v}"
            d.mkdir(parents=True, exist_ok=True)
            for f in range(n):
                Image.fromarray(frame_pixels(domain, v, f)).save(d / f"f_{f}.png")


PAIR_FILES = {"trainA": 5, "trainB": 3, "testA": 2, "testB": 2}
FRAME_VIDEOS = {"trainA": [4, 12], "trainB": [3], "testA": [2], "testB": [2, 1]}


def pair_tree(root: Path) -> Path:
    """InfraredCity-Lite scene ``monitor`` as the authors' pair files."""
    write_packed(root / "monitor", 2, PAIR_FILES)
    return root


def triplet_tree(root: Path) -> Path:
    """IRVI scene ``traffic`` as I2V-GAN triplet files."""
    write_packed(root / "traffic", 3, {"trainA": 2, "trainB": 2, "testA": 1, "testB": 1})
    return root


def frames_tree(root: Path) -> Path:
    """InfraredCity-Adverse scene ``rain`` as plain frame folders."""
    write_frames(root / "rain", FRAME_VIDEOS)
    return root
