"""Ground truth in YOLO txt format, and which label file belongs to which frame.

A label file holds one object per line, ``class x_center y_center width height``: ``class`` an
integer index into the label class names, the four others normalised by the image's width and
height (in [0, 1], width and height > 0). Blank lines are ignored; an empty file, or a frame
without a file (with name matching), is a frame with no object, as in the YOLO repositories.
Any other line is an error naming the file, the line number and what was expected.

Matching (``match``):

* ``name`` (default): ``FRAMES/<stem>.<image suffix>`` ↔ ``LABELS/<stem>.txt``, the YOLO data
  set convention;
* ``index``: the k-th frame (natural order) ↔ the k-th label file (natural order, ``classes.txt``
  left out) — for a translation written as ``000000.png …`` whose source frames were named
  otherwise. The counts must be equal.

Class names (``read_names``): a comma-separated list, or a file with one name per line
(``classes.txt``, ``coco.names``).
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from cptrans_jax import video_io
from cptrans_jax.detection.yolo import DetectError

MATCHES = ("name", "index")
NAMES_FILE = "classes.txt"  # LabelImg's class list beside its YOLO labels
_SLACK = 1e-6  # rounding of exported coordinates (1.0000001)


@dataclasses.dataclass(frozen=True)
class LabelledFrame:
    frame: str  # image path
    label: str | None  # label path, None: no file (no object)


def read_names(text: str, option: str, allow_file: bool = True) -> list[str]:
    """Class names from a file (one per line) or a comma-separated list."""
    if allow_file and os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise DetectError(
            f"{option} {text!r}: expected distinct class names, comma-separated or one per line "
            "in a file"
        )
    return names


def read_labels(path: str, num_classes: int) -> np.ndarray:
    """(K, 5) float64 rows ``class, x_center, y_center, width, height`` of one label file.

    Raises:
        DetectError: a line that is not five numbers as the module docstring says.
    """
    expected = (
        "expected 'class x_center y_center width height': an integer class in "
        f"0..{num_classes - 1} and four numbers in [0, 1] normalised by the image size, width "
        "and height > 0"
    )
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{number}: {line.strip()!r}"
            if len(fields) != 5:
                raise DetectError(f"{where} has {len(fields)} fields; {expected}")
            try:
                values = [float(v) for v in fields]
            except ValueError:
                raise DetectError(f"{where} is not numeric; {expected}") from None
            cls = values[0]
            if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < num_classes:
                raise DetectError(
                    f"{where}: class {fields[0]} is not one of the classes; {expected}"
                )
            x, y, w, h = values[1:]
            if not all(-_SLACK <= v <= 1 + _SLACK for v in (x, y, w, h)) or w <= 0 or h <= 0:
                raise DetectError(f"{where}: a coordinate is out of range; {expected}")
            rows.append(values)
    return np.asarray(rows, np.float64).reshape(-1, 5)


def to_pixels(rows: np.ndarray, width: int, height: int) -> np.ndarray:
    """YOLO rows → (K, 4) xyxy boxes in pixels of a ``width`` × ``height`` frame."""
    x, y, w, h = (rows[:, i] for i in range(1, 5))
    return np.stack(
        [(x - w / 2) * width, (y - h / 2) * height, (x + w / 2) * width, (y + h / 2) * height],
        axis=1,
    )


def label_files(folder: str) -> list[str]:
    """The ``.txt`` label files directly in ``folder`` (natural order), without classes.txt."""
    names = [
        n
        for n in os.listdir(folder)
        if n.endswith(".txt") and n != NAMES_FILE and os.path.isfile(os.path.join(folder, n))
    ]
    return [os.path.join(folder, n) for n in sorted(names, key=video_io.natural_key)]


def check_folder(path: str, option: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{option} {path} does not exist")
    if not os.path.isdir(path):
        raise DetectError(f"{option} {path} is not a folder")


def match_frames(frames_dir: str, labels_dir: str, match: str, option: str) -> list[LabelledFrame]:
    """The frames of ``frames_dir`` with their label files (module docstring).

    Raises:
        DetectError: no frames, or no frame that matches a label file, or (``index``) unequal
            counts.
    """
    check_folder(frames_dir, option)
    frames = video_io.list_frames(frames_dir)
    if not frames:
        raise DetectError(
            f"{option} {frames_dir} has no frames (expected "
            f"{' '.join(video_io.IMAGE_SUFFIXES)} files directly inside it)"
        )
    labels = label_files(labels_dir)
    if match == "index":
        if len(labels) != len(frames):
            raise DetectError(
                f"{option} {frames_dir} has {len(frames)} frames but --labels {labels_dir} has "
                f"{len(labels)} label files; --match index needs one label file per frame"
            )
        return [LabelledFrame(f, lab) for f, lab in zip(frames, labels, strict=True)]
    by_stem = {os.path.splitext(os.path.basename(p))[0]: p for p in labels}
    out = [LabelledFrame(f, by_stem.get(os.path.splitext(os.path.basename(f))[0])) for f in frames]
    if labels and not any(lf.label for lf in out):
        example = os.path.splitext(os.path.basename(frames[0]))[0]
        raise DetectError(
            f"no label file in --labels {labels_dir} has the name of a frame of {option} "
            f"{frames_dir} (expected e.g. {example}.txt for {os.path.basename(frames[0])}); if the "
            "frames are in the labels' order under other names, give --match index"
        )
    return out
