"""Reading and writing frames: video files (PyAV, FFmpeg), images and folders of frames (Pillow).

Everything here speaks uint8 RGB arrays of shape (H, W, 3):

* ``read_video(path)`` — an iterator of decoded frames (streamed: a long video is never held in
  memory); gray or YUV videos come out as 3-channel RGB. ``video_info(path)`` — frame count,
  fps and size from the container, without decoding.
* ``write_video(path, frames, fps)`` / ``VideoWriter`` — ``.mp4``/``.mov``/``.mkv``: H.264
  (libx264, CRF 17, visually near-lossless) when PyAV's FFmpeg has it, else MPEG-4 part 2;
  ``.avi``: MPEG-4 part 2 (Xvid-compatible); ``.webm``: VP9. All use yuv420p, which needs an even
  height and width: a frame with an odd side is padded by repeating its last row/column (so a
  63×47 frame is stored as 64×48). These codecs are lossy: a frame read back differs from the
  one written by a few levels.
* ``read_image(path)`` — any Pillow-readable image as RGB: gray is replicated to 3 channels,
  an alpha channel is dropped (not composited), a palette is expanded, and 16-bit images are
  scaled linearly to 8 bits (``round(v · 255 / 65535)``, the full 16-bit range, no contrast
  stretching; raw thermal frames that use a narrow range stay dark).
* ``list_frames(folder)`` — the image files of one folder (not recursive), in natural order
  (``frame_2`` before ``frame_10``).

A corrupt, truncated or unreadable file raises ``ValueError`` naming the file and what was
expected of it. FFmpeg's demuxers stop quietly at a cut-off file, so ``read_video`` also compares
the frames it decoded with the count the container announces: fewer than the header's count
(mp4, mov, avi; one frame of slack for an mp4 edit list), or fewer than 90% of duration × fps
(mkv, webm, which announce only a duration), is reported as truncated when the iterator ends.
"""

from __future__ import annotations

import dataclasses
import fractions
import os
import re
from collections.abc import Iterable, Iterator

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

PathLike = str | os.PathLike


def _suffix(path: PathLike) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()


def is_video(path: PathLike) -> bool:
    """Whether ``path`` names a video file by its suffix (``.mp4 .avi .mov .mkv .webm``)."""
    return _suffix(path) in VIDEO_SUFFIXES


def is_image(path: PathLike) -> bool:
    """Whether ``path`` names an image file by its suffix (``.png .jpg .jpeg .bmp .tif(f)``)."""
    return _suffix(path) in IMAGE_SUFFIXES


def natural_key(name: str) -> list:
    """Sort key that orders digit runs by value: ``frame_2 < frame_10``; case-insensitive."""
    parts = re.split(r"(\d+)", name)
    return [(0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts]


def list_frames(folder: PathLike) -> list[str]:
    """The image files directly inside ``folder``, naturally sorted (full paths).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is not a directory.
    """
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise FileNotFoundError(f"frame folder {folder} does not exist")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder} is not a folder of frames")
    names = [
        n
        for n in os.listdir(folder)
        if is_image(n) and not n.startswith(".") and os.path.isfile(os.path.join(folder, n))
    ]
    return [os.path.join(folder, n) for n in sorted(names, key=natural_key)]


# ----------------------------------------------------------------------------------- images


def pil_to_rgb8(image, path: str) -> np.ndarray:
    """A loaded PIL image → uint8 (H, W, 3) by the rules of the module docstring."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(image).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(
                f"{path}: 32-bit integer image with values outside 0..65535; expected an 8- or "
                "16-bit image"
            )
        a = ((a * 255 + 32767) // 65535).astype(np.uint8)  # round(v · 255 / 65535)
        return np.repeat(a[..., None], 3, axis=-1)
    if mode == "F":
        raise ValueError(f"{path}: floating-point image; expected an 8- or 16-bit image")
    if mode in ("L", "LA", "1"):
        a = np.asarray(image.convert("L"))
        return np.repeat(a[..., None], 3, axis=-1)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    # RGBA → RGB drops the alpha channel; CMYK, YCbCr, LAB are converted by Pillow.
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_image(path: PathLike) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB (gray replicated, alpha dropped, 16-bit scaled).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable image (corrupt, truncated, unsupported).
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_rgb8(image, path)
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as e:
        raise ValueError(
            f"{path}: not a readable image (expected a complete PNG/JPEG/BMP/TIFF file): {e}"
        ) from e


def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic resize of a uint8 image with Pillow (what torchvision's ``Resize`` does to a PIL
    image, i.e. the authors' test preprocessing); a no-op at the same size."""
    from PIL import Image

    if image.shape[1] == width and image.shape[0] == height:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC))


# ----------------------------------------------------------------------------------- videos


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a video container says about its first video stream."""

    num_frames: int | None  # from the header, else duration × fps (approximate), else None
    fps: float | None
    width: int
    height: int
    codec: str


def _open_input(path: str):
    import av

    if not os.path.isfile(path):
        raise FileNotFoundError(f"video {path} does not exist")
    try:
        container = av.open(path, mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path}: not a readable video (expected a complete {_suffix(path) or 'video'} file "
            f"with a video stream): {e}"
        ) from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path}: the file has no video stream")
    return container


def _announced_frames(container, stream) -> tuple[int | None, bool]:
    """(frame count the container announces, whether it is exact rather than duration × fps)."""
    if stream.frames:
        return int(stream.frames), True
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        return None, False
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000  # AV_TIME_BASE
    else:
        return None, False
    return (max(int(round(seconds * float(rate))), 1), False) if seconds > 0 else (None, False)


def video_info(path: PathLike) -> VideoInfo:
    """Frame count, fps, size and codec of a video's first video stream (nothing decoded).

    ``num_frames`` comes from the container header when it has one (mp4, mov, avi), else from
    the duration × fps (mkv, webm: then it may be off by a frame), else it is None.
    """
    path = os.fspath(path)
    container = _open_input(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        num_frames, _ = _announced_frames(container, stream)
        return VideoInfo(
            num_frames=num_frames,
            fps=fps,
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            codec=stream.codec_context.name,
        )
    finally:
        container.close()


def read_video(path: PathLike) -> Iterator[np.ndarray]:
    """The frames of a video's first video stream, decoded one at a time, as uint8 (H, W, 3).

    Opening errors are raised at the call (not at the first ``next``); a file that breaks off
    mid-stream raises ``ValueError`` when the decoder reaches the damage.
    """
    path = os.fspath(path)
    container = _open_input(path)
    return _decode(container, path)


def _decode(container, path: str) -> Iterator[np.ndarray]:
    import av

    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        announced, exact = _announced_frames(container, stream)
        decoded = 0
        try:
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")
                decoded += 1
        except av.FFmpegError as e:
            raise ValueError(
                f"{path}: video data is corrupt or truncated after {decoded} frames: {e}"
            ) from e
        # The demuxer stops quietly at a cut-off file; compare with what the container announced
        # (one frame of slack for an mp4 edit list; 10% for a duration-based estimate).
        if announced is not None:
            short = decoded < announced - 1 if exact else decoded < 0.9 * announced - 1
            if short:
                raise ValueError(
                    f"{path}: video is truncated or corrupt: the container announces "
                    f"{'' if exact else 'about '}{announced} frames, only {decoded} could be "
                    "decoded"
                )
    finally:
        container.close()


def _choose_codec(path: str) -> str:
    import av

    suffix = _suffix(path)
    if suffix == ".webm":
        candidates = ("libvpx-vp9", "libvpx")
    elif suffix == ".avi":
        candidates = ("mpeg4", "mjpeg")
    elif suffix in (".mp4", ".mov", ".mkv"):
        candidates = ("libx264", "mpeg4")
    else:
        raise ValueError(
            f"{path}: unknown video suffix {suffix!r}; expected one of {', '.join(VIDEO_SUFFIXES)}"
        )
    for name in candidates:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - PyAV raises different errors across versions
            continue
    raise ValueError(f"{path}: PyAV's FFmpeg has none of the encoders {candidates}")


def _even(frame: np.ndarray) -> np.ndarray:
    """Pads an odd height/width by repeating the last row/column (yuv420p needs even sides)."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


def _as_rgb_frame(frame: np.ndarray, path: str) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=-1)
    if frame.ndim != 3 or frame.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: frames must be (H, W, 3) or (H, W), got {frame.shape}")
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    return np.ascontiguousarray(frame)


class VideoWriter:
    """Streams uint8 RGB frames into a video file; the codec follows the suffix (see module doc).

    The stream is created at the first frame (its size fixes the video's size; every later frame
    must have the same size). ``close`` flushes the encoder; use as a context manager.
    """

    def __init__(self, path: PathLike, fps: float, *, codec: str | None = None) -> None:
        self.path = os.fspath(path)
        if not is_video(self.path):
            raise ValueError(
                f"{self.path}: unknown video suffix {_suffix(self.path)!r}; expected one of "
                f"{', '.join(VIDEO_SUFFIXES)}"
            )
        if not fps or fps <= 0:
            raise ValueError(f"{self.path}: fps must be positive, got {fps}")
        self.fps = float(fps)
        self.codec = codec or _choose_codec(self.path)
        self.frames_written = 0
        self._size: tuple[int, int] | None = None  # (H, W) of the frames given
        self._container = None
        self._stream = None

    def _open(self, height: int, width: int) -> None:
        import av

        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        # mpeg4 needs a time base denominator < 2^16: 30000/1001 (29.97) is fine.
        rate = fractions.Fraction(self.fps).limit_denominator(1001)
        self._container = av.open(self.path, mode="w")
        stream = self._container.add_stream(self.codec, rate=rate)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuvj420p" if self.codec == "mjpeg" else "yuv420p"
        if self.codec == "libx264":
            stream.options = {"crf": "17", "preset": "medium"}
        elif self.codec.startswith("libvpx"):
            stream.options = {"crf": "20", "b": "0"}
        else:  # mpeg4/mjpeg: ~1.5 bits per pixel, high quality at any size
            stream.bit_rate = max(int(stream.width * stream.height * self.fps * 1.5), 1_000_000)
        self._stream = stream

    def write(self, frame: np.ndarray) -> None:
        import av

        frame = _as_rgb_frame(frame, self.path)
        if self._size is None:
            self._size = frame.shape[:2]
            self._open(*self._size)
        elif frame.shape[:2] != self._size:
            raise ValueError(
                f"{self.path}: frame {self.frames_written} is {frame.shape[1]}×{frame.shape[0]}, "
                f"the video is {self._size[1]}×{self._size[0]}; every frame needs the same size"
            )
        video_frame = av.VideoFrame.from_ndarray(_even(frame), format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():  # flush delayed frames
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_video(
    path: PathLike, frames: Iterable[np.ndarray], fps: float, *, codec: str | None = None
) -> int:
    """Writes uint8 (H, W, 3) (or (H, W) gray) frames as a video; returns the frame count.

    ``frames`` may be any iterable (a generator is consumed one frame at a time). The codec
    follows the suffix (module docstring); odd heights/widths are padded to even.
    """
    with VideoWriter(path, fps, codec=codec) as writer:
        for frame in frames:
            writer.write(frame)
        if writer.frames_written == 0:
            raise ValueError(f"{writer.path}: no frames to write")
    return writer.frames_written
