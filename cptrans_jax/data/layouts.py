"""The folder layouts the data sets arrive in, and reading frames out of them with clear errors.

A scene folder (``<manual_dir>/<scene>/``) holds four domain-split folders: ``trainA`` and
``testA`` (infrared), ``trainB`` and ``testB`` (visible). Inside them, one of two layouts:

``packed`` — the authors' training files: every image holds ``k`` consecutive frames side by
    side, left to right (ROMA/InfraredCity pair files, ``k = 2``, 512×256: left = t, right = t+1;
    I2V-GAN/IRVI triplet files, ``k = 3``, 768×256). Files are found recursively and sorted by
    path, as the authors' loaders do; each file is its own short video of ``k`` frames.
``frames`` — plain ordered frame folders: every folder that directly holds image files is one
    video, its frames in natural order (``frame_2`` before ``frame_10``). What
    ``data_prep/video_to_frames.py`` writes.

Frames are returned as uint8 RGB arrays; gray (8- or 16-bit) frames are replicated to three
channels, as the authors' ``convert('RGB')`` does. Anything else — a file that does not decode, an
alpha or CMYK channel, a packed file whose width is not ``k`` times its height, a frame whose size
differs from the rest of its video — is an error naming the file and what was expected.

A frame folder holding ``INCOMPLETE.txt`` came from a video that broke off (a truncated or
damaged file): ``data_prep/video_to_frames.py`` kept the frames decoded before the damage and
left the marker saying how many of how many. Those frames are usable; validating and building
report each such folder (a ``warning:`` line) rather than taking it silently.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from cptrans_jax import video_io
from cptrans_jax.video_io import IMAGE_SUFFIXES, natural_key, pil_to_rgb8

DOMAIN_DIRS = {"train": ("trainA", "trainB"), "test": ("testA", "testB")}
DOMAINS = ("infrared", "visible")  # A, B
LAYOUTS = ("packed", "frames")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a data set is: its scenes, how many frames its packed files hold, where to get it."""

    scenes: tuple[str, ...]
    packed_frames: int
    obtain: str


DATASETS = {
    "irvi": DatasetSpec(
        scenes=("traffic", "monitoring"),
        packed_frames=3,
        obtain="IRVI is distributed by the I2V-GAN authors (see the I2V-GAN repository's README "
        "for the download link); its training files are triplets of frames, 768×256.",
    ),
    "infraredcity_lite": DatasetSpec(
        scenes=(
            "city_clearday",
            "city_overcast",
            "highway_clearday",
            "highway_overcast",
            "monitor",
        ),
        packed_frames=2,
        obtain="InfraredCity-Lite is distributed by the ROMA authors after registration (see the "
        "ROMA repository's README); its training files are pairs of frames, 512×256, left = t.",
    ),
    "infraredcity_adverse": DatasetSpec(
        scenes=("rain", "snow"),
        packed_frames=2,
        obtain="InfraredCity-Adverse is distributed by the CPTrans authors after registration "
        "(see the CPTrans repository's README); pairs of frames, 512×256, as InfraredCity-Lite.",
    ),
}


class DataLayoutError(ValueError):
    """A manual folder does not match the layout; the message lists every problem found."""

    def __init__(self, problems: list[str], header: str = "") -> None:
        self.problems = list(problems)
        lines = [header] if header else []
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


# What a FrameError is about, for grouping many alike (data_prep/validate.py).
CORRUPT, BAD_MODE, NOT_PACKED, SIZE_DIFFERS = "corrupt", "mode", "not_packed", "size_differs"
# The file data_prep/video_to_frames.py leaves in a frame folder whose video broke off: its frames
# are usable but fewer than the video announced, which validate and build report.
INCOMPLETE_MARKER = "INCOMPLETE.txt"


class FrameError(ValueError):
    """One image file is unusable; the message names it and says what was expected."""

    def __init__(self, path: str | os.PathLike, reason: str, corrupt: bool, kind: str) -> None:
        self.path = str(path)
        self.reason = reason
        self.corrupt = corrupt  # undecodable/truncated (skippable) vs wrong format (never skipped)
        self.kind = kind  # CORRUPT, BAD_MODE, NOT_PACKED or SIZE_DIFFERS
        super().__init__(f"{self.path}: {reason}")


def is_image(path: Path) -> bool:
    return video_io.is_image(path) and not path.name.startswith(".")


# Modes with a channel the method has no use for (alpha) or whose conversion would guess.
_REFUSED_MODES = ("LA", "La", "RGBA", "RGBa", "PA", "CMYK", "YCbCr", "LAB", "HSV", "F")


def read_frame(path: str | os.PathLike) -> np.ndarray:
    """Decode one image file to uint8 RGB ``(H, W, 3)``.

    Gray frames (8- or 16-bit) become three equal channels (16-bit scaled by 255/65535, as
    ``video_io.read_image`` does). Raises FrameError for an undecodable or truncated file
    (``corrupt=True``) and for images with an alpha channel or an unusual mode (``corrupt=False``).
    """
    try:
        with Image.open(path) as img:
            img.load()  # decodes the whole file now: a truncated file fails here, not later
            mode = img.mode
            if mode in _REFUSED_MODES or (mode == "P" and "transparency" in img.info):
                raise FrameError(
                    path,
                    f"has {len(img.getbands())} channels (mode {mode}); expected a gray (1 "
                    "channel) or RGB (3 channel) image — remove the alpha channel or convert it",
                    corrupt=False,
                    kind=BAD_MODE,
                )
            return pil_to_rgb8(img, os.fspath(path))
    except FrameError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise FrameError(
            path,
            f"cannot be decoded as an image ({e}); the file is corrupt or truncated",
            corrupt=True,
            kind=CORRUPT,
        ) from e


def split_packed(strip: np.ndarray, k: int, path: str | os.PathLike) -> list[np.ndarray]:
    """The ``k`` frames of a packed file, left to right; its width must be ``k`` × its height."""
    h, w = strip.shape[:2]
    if w != k * h:
        raise FrameError(
            path,
            f"is {w}×{h}; a packed file of {k} frames must be {k}·H wide and H high "
            f"(e.g. {256 * k}×256). Is this a plain frame? Use the 'frames' layout for those.",
            corrupt=False,
            kind=NOT_PACKED,
        )
    return [strip[:, i * h : (i + 1) * h] for i in range(k)]


def frames_of_file(
    path: Path, layout: str, k: int, video_size: tuple[int, int] | None
) -> list[np.ndarray]:
    """The frames one file contributes: ``k`` for a packed file, one for a plain frame.

    ``video_size`` is the (H, W) of the video's earlier frames (None for the first): a plain frame
    of another size is an error.
    """
    pixels = read_frame(path)
    if layout == "packed":
        return split_packed(pixels, k, path)
    if video_size is not None and pixels.shape[:2] != video_size:
        raise FrameError(
            path,
            f"is {pixels.shape[1]}×{pixels.shape[0]} but the frames before it in {path.parent} "
            f"are {video_size[1]}×{video_size[0]}; every frame of a video must have one size",
            corrupt=False,
            kind=SIZE_DIFFERS,
        )
    return [pixels]


@dataclasses.dataclass(frozen=True)
class Video:
    """One video of a domain-split folder: its id (path relative to the split) and frame files.

    For the packed layout a video is one file and ``files`` holds it once.
    """

    video_id: str
    files: tuple[Path, ...]


def find_videos(split_dir: Path, layout: str) -> tuple[list[Video], list[Path]]:
    """The videos under one domain-split folder, and the non-image files that were ignored."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    by_dir: dict[Path, list[Path]] = {}
    ignored: list[Path] = []
    for root, dirs, names in os.walk(split_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = Path(root) / name
            if is_image(path):
                by_dir.setdefault(Path(root), []).append(path)
            elif not name.startswith("."):
                ignored.append(path)
    if layout == "packed":
        files = sorted((f for fs in by_dir.values() for f in fs), key=str)
        videos = [Video(str(f.relative_to(split_dir).with_suffix("")), (f,)) for f in files]
    else:
        videos = [
            Video(
                str(d.relative_to(split_dir)), tuple(sorted(fs, key=lambda p: natural_key(str(p))))
            )
            for d, fs in sorted(by_dir.items(), key=lambda kv: natural_key(str(kv[0])))
        ]
    return videos, sorted(ignored)


def layout_help(scene_dir: str | os.PathLike, layout: str, k: int) -> str:
    """A short description of the expected tree, for error messages."""
    if layout == "packed":
        inner = f"image files, each {k} frames side by side ({256 * k}×256), found recursively"
    else:
        inner = "one folder of ordered frame images per video"
    return (
        f"expected {scene_dir}/trainA, trainB, testA, testB (A = infrared, B = visible), "
        f"each holding {inner}"
    )


def check_structure(scene_dir: Path, layout: str, k: int) -> list[str]:
    """Problems with the folder tree itself (missing folders, empty splits); no decoding."""
    if not scene_dir.is_dir():
        return [f"missing folder {scene_dir} ({layout_help(scene_dir, layout, k)})"]
    problems = []
    for split_dirs in DOMAIN_DIRS.values():
        for name in split_dirs:
            d = scene_dir / name
            if not d.is_dir():
                problems.append(f"missing folder {d}")
            elif not find_videos(d, layout)[0]:
                problems.append(
                    f"{d} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                    "an empty split cannot be used"
                )
    if problems:
        problems.append(layout_help(scene_dir, layout, k))
    return problems


@dataclasses.dataclass
class Frame:
    """One frame ready to store: domain 0 = infrared / 1 = visible, its video and position."""

    domain: int
    video_id: str
    frame_index: int
    pixels: np.ndarray  # uint8 (H, W, 3)
    path: Path


def incomplete_video(marker: Path) -> str:
    """What an :data:`INCOMPLETE_MARKER` file says: its folder and its first line."""
    try:
        lines = marker.read_text(errors="replace").strip().splitlines()
    except OSError as e:
        lines = [f"(marker unreadable: {e.strerror or e})"]
    return f"{marker.parent}: {lines[0] if lines else 'marked incomplete'}"


def split_ignored(ignored: list[Path]) -> tuple[list[Path], list[str]]:
    """The non-image files of a split: (really ignored, incomplete-video markers' lines)."""
    markers = [p for p in ignored if p.name == INCOMPLETE_MARKER]
    return [p for p in ignored if p.name != INCOMPLETE_MARKER], [
        incomplete_video(p) for p in markers
    ]


@dataclasses.dataclass
class ScanReport:
    """What a full pass over a split found."""

    frames: int = 0
    videos: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)  # corrupt files skipped
    ignored: list[str] = dataclasses.field(default_factory=list)  # non-image files
    incomplete: list[str] = dataclasses.field(default_factory=list)  # videos that broke off


def iter_split(
    scene_dir: Path,
    split: str,
    layout: str,
    k: int,
    *,
    skip_corrupt: bool = False,
    report: ScanReport | None = None,
) -> Iterator[Frame]:
    """Every frame of ``split`` ("train" or "test") in order: infrared videos, then visible.

    A corrupt file raises FrameError unless ``skip_corrupt``, in which case it is recorded in
    ``report.skipped`` and its frames are left out (frame indices keep their positions, so a clip
    never spans the gap). Wrong sizes and channel counts always raise.
    """
    report = report if report is not None else ScanReport()
    for domain, name in enumerate(DOMAIN_DIRS[split]):
        videos, ignored = find_videos(scene_dir / name, layout)
        ignored, incomplete = split_ignored(ignored)
        report.ignored += [str(p) for p in ignored]
        report.incomplete += incomplete
        for video in videos:
            report.videos += 1
            yield from iter_video(
                video, domain, layout, k, skip_corrupt=skip_corrupt, report=report
            )


def iter_video(
    video: Video,
    domain: int,
    layout: str,
    k: int,
    *,
    skip_corrupt: bool = False,
    report: ScanReport | None = None,
) -> Iterator[Frame]:
    """The frames of one video in order, as :func:`iter_split` reads them (``report.frames`` and
    ``report.skipped`` are updated; ``report.videos`` is the caller's). One video is the unit of
    work of the Beam build: its frames must be read in order to check they share one size."""
    report = report if report is not None else ScanReport()
    size = None
    for position, path in enumerate(video.files):
        try:
            parts = frames_of_file(path, layout, k, size)
        except FrameError as e:
            if e.corrupt and skip_corrupt:
                report.skipped.append(str(e))
                continue
            raise
        size = parts[0].shape[:2]
        for offset, part in enumerate(parts):
            report.frames += 1
            yield Frame(domain, video.video_id, position + offset, part, path)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One reason a scene cannot be built; ``kind`` groups alike ones (FrameError kinds, or
    ``"structure"`` for missing and empty folders)."""

    text: str
    kind: str = "structure"


@dataclasses.dataclass
class SceneCheck:
    """What :func:`validate_scene` found."""

    problems: list[Problem] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)  # non-image files, ignored
    incomplete: list[str] = dataclasses.field(default_factory=list)  # videos that broke off
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # frames per split folder


def validate_scene(scene_dir: str | os.PathLike, layout: str, k: int) -> SceneCheck:
    """Check a whole scene folder, decoding every file.

    Unlike the builder, which stops at the first bad file, this reports every problem found.
    Notes are things the builder passes over but a user should know of (non-image files);
    ``incomplete`` lists the frame folders that data_prep/video_to_frames.py marked as cut short.
    """
    scene_dir = Path(scene_dir)
    check = SceneCheck(problems=[Problem(p) for p in check_structure(scene_dir, layout, k)])
    if not scene_dir.is_dir():
        return check
    for split in DOMAIN_DIRS:
        for name in DOMAIN_DIRS[split]:
            split_dir = scene_dir / name
            if not split_dir.is_dir():
                continue
            videos, ignored = find_videos(split_dir, layout)
            ignored, incomplete = split_ignored(ignored)
            check.incomplete += incomplete
            check.notes += [
                f"{p}: not an image file ({', '.join(IMAGE_SUFFIXES)}), ignored" for p in ignored
            ]
            n = 0
            for video in videos:
                size = None
                for path in video.files:
                    try:
                        parts = frames_of_file(path, layout, k, size)
                        size = parts[0].shape[:2]
                        n += len(parts)
                    except FrameError as e:
                        check.problems.append(Problem(str(e), e.kind))
            check.counts[name] = n
    return check
