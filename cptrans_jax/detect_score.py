"""Detection score ("YOLO score", CPTrans Table 3): AP of a pre-trained detector on frames.

Usage::

    python -m cptrans_jax.detect_score --frames [NAME=]DIR --labels DIR --detector MODEL.onnx \\
        [--compare [NAME=]DIR ...] [--classes car,bus,truck] [--iou 0.5] [--json out.json] \\
        [--detector_names LIST|FILE] [--label_names LIST|FILE] [--match name|index] \\
        [--layout auto|yolov5|yolov8|end2end] [--imgsz 640] [--conf 0.001] [--nms_iou 0.6] \\
        [--max_det 100] [--batch_size 8]

The frames of ``--frames`` (the translation) and of every ``--compare`` folder (say the raw
infrared frames and the real visible frames) are scored against the same labels, one row per
set — the layout of the paper's Table 3. A set is ``DIR`` or ``NAME=DIR`` (the name defaults to
the folder's name).

* Detector (:mod:`cptrans_jax.detection.yolo`): the user's ONNX export of a YOLO-family
  model — YOLOv5-style (batch, boxes, 5 + nc), YOLOv8/YOLO11-style (batch, 4 + nc, boxes) or
  end-to-end (batch, boxes, 6) outputs — run by onnxruntime (CUDA when onnxruntime-gpu has it,
  else CPU), batched, with letterbox pre-processing and OpenCV's class-aware NMS.
* Labels (:mod:`cptrans_jax.detection.labels`): YOLO txt, one file per frame, matched by name
  (``--match name``) or by order (``--match index``). Their class indices refer to
  ``--label_names``, by default ``LABELS/classes.txt`` when there is one, else the detector's
  own classes (labels in, say, COCO's indices).
* ``--classes``: the class names scored (names both the detector and the labels know; default:
  every class of the labels that the detector knows and that occurs in them).
* AP (:mod:`cptrans_jax.detection.average_precision`): COCO's 101-point interpolated AP at IoU
  ``--iou`` (default 0.5, i.e. AP50), computed by pycocotools, per class and the mean over the
  classes with ground truth.

It prints the table (and, with ``--json``, writes it, atomically) and the time per frame:
wall time of the whole scoring loop divided by the frames scored (reading, letterbox,
onnxruntime, NMS), and the onnxruntime part alone. A model load runs the model once on a blank
batch (which also fixes the layout), outside the timing.

Bad input (a missing folder or model, an unknown class name, an output layout the model does not
have, a malformed label line, frames that match no label file) ends with one ``error: …`` line
and exit status 2, before any frame is scored where it can be found out before.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cptrans_jax import video_io
from cptrans_jax.cli import run_report
from cptrans_jax.detection import labels as labels_lib
from cptrans_jax.detection.average_precision import DEFINITION, average_precision
from cptrans_jax.detection.yolo import LAYOUTS, DetectError, Detections, YoloDetector
from cptrans_jax.frame_io import Progress


def parse_set(text: str, option: str) -> tuple[str, str]:
    """``NAME=DIR`` or ``DIR`` → (name, dir); an existing path is never split at ``=``."""
    if "=" in text and not os.path.exists(text):
        name, path = text.split("=", 1)
        if not name:
            raise DetectError(f"{option} {text!r}: expected DIR or NAME=DIR")
        return name, path
    return os.path.basename(os.path.normpath(text)) or text, text


def _classes(
    wanted: Sequence[str] | None,
    detector_names: Sequence[str],
    label_names: Sequence[str],
    present: set[int],
) -> list[str]:
    """The scored class names (module docstring), checked against both name lists."""
    if wanted is None:
        both = [n for i, n in enumerate(label_names) if i in present and n in detector_names]
        if not both:
            raise DetectError(
                "no class of the labels is a class of the detector (labels: "
                f"{', '.join(label_names)}; detector: {', '.join(detector_names)}); give "
                "--label_names, --detector_names or --classes"
            )
        return both
    for name in wanted:
        for what, names in (("detector", detector_names), ("labels", label_names)):
            if name not in names:
                shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
                raise DetectError(
                    f"--classes: unknown class {name!r}: not a class of the {what} (its classes "
                    f"are: {shown})"
                )
    return list(wanted)


def _detect(frames, detector, det_index, pool, conf, nms_iou, max_det):
    """Yields (detections, images) per batch; the next batch is read and letterboxed in
    ``pool`` while onnxruntime runs this one."""

    def read(chunk):
        images = [video_io.read_image(lf.frame) for lf in chunk]
        return images, detector.prepare(images)

    chunks = [frames[i : i + detector.batch] for i in range(0, len(frames), detector.batch)]
    pending = pool.submit(read, chunks[0])
    for k in range(len(chunks)):
        images, (x, boxes) = pending.result()
        if k + 1 < len(chunks):
            pending = pool.submit(read, chunks[k + 1])
        dets = detector.infer(x, boxes, det_index, conf=conf, nms_iou=nms_iou, max_det=max_det)
        yield dets, images


def _truth(rows, label_to_scored, height, width) -> tuple[np.ndarray, np.ndarray]:
    """One frame's ground truth of the scored classes: xyxy pixel boxes, scored indices."""
    if rows is None or not len(rows):
        return np.zeros((0, 4)), np.zeros(0, np.int64)
    rows = rows[np.array([int(c) in label_to_scored for c in rows[:, 0]], bool)]
    classes = np.array([label_to_scored[int(c)] for c in rows[:, 0]], np.int64)
    return labels_lib.to_pixels(rows, width, height), classes


def score_sets(
    sets: Sequence[tuple[str, str]],
    labels_dir: str,
    detector: YoloDetector,
    *,
    classes: Sequence[str] | None = None,
    label_names: Sequence[str] | None = None,
    match: str = "name",
    iou: float = 0.5,
    conf: float = 0.001,
    nms_iou: float = 0.6,
    max_det: int = 100,
    print_fn: Callable[[str], object] = print,
    progress_every_s: float = 5.0,
) -> dict[str, Any]:
    """AP per class of ``detector`` on each set of frames against ``labels_dir`` (module doc).

    Returns the JSON-able result (``format_report`` prints it).
    """
    labels_lib.check_folder(labels_dir, "--labels")
    if not labels_lib.label_files(labels_dir):
        raise DetectError(f"--labels {labels_dir} has no .txt label files")
    if label_names is None:
        names_file = os.path.join(labels_dir, labels_lib.NAMES_FILE)
        if os.path.isfile(names_file):
            label_names = labels_lib.read_names(names_file, "--labels' classes.txt")
        else:
            label_names = detector.names
    label_names = list(label_names)
    # Every set's frames and every label file are checked before any frame is scored.
    matched = [
        labels_lib.match_frames(d, labels_dir, match, "--frames" if k == 0 else "--compare")
        for k, (_, d) in enumerate(sets)
    ]
    rows: dict[str, np.ndarray] = {}
    for lf in (lf for m in matched for lf in m if lf.label and lf.label not in rows):
        rows[lf.label] = labels_lib.read_labels(lf.label, len(label_names))
    present = {int(c) for r in rows.values() for c in r[:, 0]}
    scored = _classes(classes, detector.names, label_names, present)
    det_index = [detector.names.index(n) for n in scored]
    det_to_scored = {d: k for k, d in enumerate(det_index)}
    label_to_scored = {label_names.index(n): k for k, n in enumerate(scored)}
    total = sum(len(m) for m in matched)
    print_fn(
        f"scoring {len(sets)} set(s), {total} frames, classes {', '.join(scored)} with "
        f"{os.path.basename(detector.path)} ({detector.layout} layout, input "
        f"{detector.width}×{detector.height}, batch {detector.batch}, {detector.provider})"
    )
    progress = Progress(total, print_fn, progress_every_s)
    inference_before, detect_s, ap_s, done = detector.inference_s, 0.0, 0.0, 0
    results = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        for (name, folder), frames in zip(sets, matched, strict=True):
            start = time.perf_counter()
            detections, sizes = [], []
            for dets, images in _detect(frames, detector, det_index, pool, conf, nms_iou, max_det):
                for det in dets:
                    cls = np.array([det_to_scored[int(c)] for c in det.classes], np.int64)
                    detections.append(Detections(det.boxes, det.scores, cls))
                sizes += [image.shape[:2] for image in images]
                done += len(images)
                progress.update(done)
            detect_s += time.perf_counter() - start
            start = time.perf_counter()
            truth = [
                _truth(rows.get(lf.label) if lf.label else None, label_to_scored, h, w)
                for lf, (h, w) in zip(frames, sizes, strict=True)
            ]
            per_class, mean = average_precision(
                truth, detections, len(scored), iou=iou, max_det=max_det
            )
            ap_s += time.perf_counter() - start
            results.append(
                {
                    "name": name,
                    "path": folder,
                    "frames": len(frames),
                    "labelled_frames": sum(1 for lf in frames if lf.label),
                    "objects": int(sum(len(t[0]) for t in truth)),
                    "ap": dict(zip(scored, per_class, strict=True)),
                    "mean": mean,
                }
            )
    inference = detector.inference_s - inference_before
    return {
        "detector": detector.path,
        "layout": detector.layout,
        "input_size": [detector.height, detector.width],
        "provider": detector.provider,
        "ap_definition": f"{DEFINITION}, IoU {iou}, max {max_det} detections per frame",
        "iou": iou,
        "conf": conf,
        "nms_iou": nms_iou,
        "classes": scored,
        "sets": results,
        "timing": {
            "frames": done,
            "batch": detector.batch,
            "ms_per_frame": 1000 * detect_s / max(done, 1),
            "inference_ms_per_frame": 1000 * inference / max(done, 1),
            "ap_seconds": ap_s,
        },
    }


def format_report(result: dict[str, Any]) -> str:
    """The table: one row per set, AP per class and the mean, then the time per frame."""
    classes = result["classes"]
    width = max([len("set"), *(len(s["name"]) for s in result["sets"])])
    columns = [max(len(c), 6) for c in classes]
    lines = [
        f"AP@{result['iou']:g} per class: {result['ap_definition']}",
        "  ".join(
            [
                "set".ljust(width),
                "frames",
                *(c.rjust(w) for c, w in zip(classes, columns, strict=True)),
                "  mean",
            ]
        ),
    ]

    def cell(v: float | None, w: int) -> str:
        return ("—" if v is None else f"{v:.4f}").rjust(w)

    for s in result["sets"]:
        aps = [cell(s["ap"][c], w) for c, w in zip(classes, columns, strict=True)]
        lines.append(
            "  ".join([s["name"].ljust(width), str(s["frames"]).rjust(6), *aps, cell(s["mean"], 6)])
        )
    missing = [c for c in classes if all(s["ap"][c] is None for s in result["sets"])]
    if missing:
        lines.append(f"—: no labelled {', '.join(missing)} in any set, left out of the mean")
    t = result["timing"]
    lines.append(
        f"time per frame: {t['ms_per_frame']:.2f} ms over {t['frames']} frames (reading, "
        f"letterbox, onnxruntime, NMS; {t['inference_ms_per_frame']:.2f} ms of it in "
        f"onnxruntime, {result['provider']}, batch {t['batch']}); AP {t['ap_seconds']:.2f} s"
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cptrans_jax.detect_score",
        description="AP@IoU per class of a YOLO ONNX detector on translated frames (and on "
        "--compare sets), against YOLO txt labels: the papers' detection ('YOLO') score.",
    )
    p.add_argument("--frames", required=True, help="[NAME=]DIR: the translated frames")
    p.add_argument("--labels", required=True, help="folder of YOLO txt labels, one per frame")
    p.add_argument("--detector", required=True, help="ONNX export of a YOLO detector")
    p.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="[NAME=]DIR",
        help="more sets scored on the same labels (raw infrared, real visible …)",
    )
    p.add_argument("--classes", default=None, help="class names to score, comma-separated")
    p.add_argument("--iou", type=float, default=0.5, help="IoU of a match (default 0.5)")
    p.add_argument("--json", default=None, help="also write the results here (atomically)")
    p.add_argument(
        "--detector_names",
        default=None,
        help="the detector's class names when its metadata has none (list or file)",
    )
    p.add_argument(
        "--label_names",
        default=None,
        help="the labels' class names (list or file; default LABELS/classes.txt, "
        "else the detector's)",
    )
    p.add_argument(
        "--match",
        choices=labels_lib.MATCHES,
        default="name",
        help="frame ↔ label file by name (default) or by order",
    )
    p.add_argument(
        "--layout",
        choices=("auto", *LAYOUTS),
        default="auto",
        help="the detector's output layout (default: from its shape)",
    )
    p.add_argument(
        "--imgsz",
        type=int,
        default=640,
        help="input size of a model whose input size is dynamic (default 640)",
    )
    p.add_argument("--conf", type=float, default=0.001, help="score threshold (default 0.001)")
    p.add_argument("--nms_iou", type=float, default=0.6, help="NMS IoU (default 0.6)")
    p.add_argument("--max_det", type=int, default=100, help="detections per frame (default 100)")
    p.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="frames per run for a dynamic-batch model (default 8)",
    )
    return p


def _check_numbers(args: argparse.Namespace) -> None:
    for option, value in (("--iou", args.iou), ("--nms_iou", args.nms_iou)):
        if not 0 < value <= 1:
            raise DetectError(f"{option} must be in (0, 1], got {value}")
    if not 0 <= args.conf < 1:
        raise DetectError(f"--conf must be in [0, 1), got {args.conf}")
    for option, value in (
        ("--max_det", args.max_det),
        ("--batch_size", args.batch_size),
        ("--imgsz", args.imgsz),
    ):
        if value < 1:
            raise DetectError(f"{option} must be >= 1, got {value}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def compute() -> dict:
        sets = [parse_set(args.frames, "--frames")]
        sets += [parse_set(c, "--compare") for c in args.compare]
        for (_, folder), option in zip(
            sets, ["--frames"] + ["--compare"] * len(args.compare), strict=True
        ):
            labels_lib.check_folder(folder, option)
        detector_names = args.detector_names and labels_lib.read_names(
            args.detector_names, "--detector_names"
        )
        label_names = args.label_names and labels_lib.read_names(args.label_names, "--label_names")
        classes = args.classes and labels_lib.read_names(
            args.classes, "--classes", allow_file=False
        )
        detector = YoloDetector(
            args.detector,
            names=detector_names,
            layout=args.layout,
            imgsz=args.imgsz,
            batch_size=args.batch_size,
        )
        return score_sets(
            sets,
            args.labels,
            detector,
            classes=classes,
            label_names=label_names,
            match=args.match,
            iou=args.iou,
            conf=args.conf,
            nms_iou=args.nms_iou,
            max_det=args.max_det,
            print_fn=lambda line: print(line, flush=True),
        )

    return run_report(
        compute,
        format_report,
        json_path=args.json,
        check=lambda: _check_numbers(args),
        ensure_ascii=False,
    )


if __name__ == "__main__":
    sys.exit(main())
