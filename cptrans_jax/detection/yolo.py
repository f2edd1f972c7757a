"""A YOLO-family detector exported to ONNX, run with onnxruntime: letterbox, decode, NMS.

The model is the user's own export (we ship and download no weights). Supported output
layouts (``LAYOUTS``), of the model's first output, ``nc`` being the number of classes:

* ``yolov5``: (batch, boxes, 5 + nc) — centre x, centre y, width, height (input pixels),
  objectness, nc class probabilities; a box's class score is objectness × class probability.
  What YOLOv5's ``export.py`` writes (and the YOLOv3/YOLOv7 repositories' exports of the same
  head, e.g. (1, 25200, 85) for COCO at 640²).
* ``yolov8``: (batch, 4 + nc, boxes) — centre x, centre y, width, height, nc class scores, no
  objectness. What Ultralytics' ``yolo export format=onnx`` writes for YOLOv8 and YOLO11
  detection models, e.g. (1, 84, 8400).
* ``end2end``: (batch, boxes, 6) — x1, y1, x2, y2, score, class, after the model's own NMS
  (Ultralytics' ``nms=True`` exports, YOLOv10 and YOLO26). No NMS is applied again.

``layout="auto"`` picks the one layout that the output shape fits for nc classes (read by
running the model once on a blank batch at load); a shape that fits none, or (1 class, 6
columns) that fits both ``yolov5`` and ``end2end``, is an error asking for ``--layout``. Anything
else (segmentation heads, raw per-scale heads) is refused with the shapes it was checked
against.

Class names come from the model's metadata (``names``, which Ultralytics and YOLOv5 exports
embed), else from ``names``; the input size from the input's static shape, else the metadata's
``imgsz``, else ``imgsz`` (640).

Pre-processing is Ultralytics' letterbox: scale by r = min(H_in / h, W_in / w) (up or down),
resize to (round(w·r), round(h·r)) with bilinear interpolation (OpenCV ``INTER_LINEAR``), pad
to the input size centred with gray 114 (left/top = round(pad/2 − 0.1)), RGB, /255, NCHW.
Post-processing: candidates above ``conf`` (every class of a box that clears it, as the YOLO
repositories' validation does), class-aware NMS at ``nms_iou`` (OpenCV's
``cv2.dnn.NMSBoxesBatched``, the NMS of YOLO ONNX deployments), at most ``max_det`` boxes per
frame by score, boxes mapped back through the letterbox and clipped to the frame. Defaults are
the validation settings of the YOLOv3/v5 repositories (conf 0.001, NMS IoU 0.6).

Inference is batched: a model with a dynamic batch axis takes ``batch_size`` frames per run, a
fixed-batch one (the usual export) its own batch, the last one padded.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import time
from collections.abc import Sequence

import numpy as np

LAYOUTS = ("yolov5", "yolov8", "end2end")
PAD_VALUE = 114  # Ultralytics' letterbox gray
MAX_NMS = 30_000  # candidates kept for NMS per frame, by score (as the YOLO repositories)


class DetectError(ValueError):
    """A detector, option or input that cannot be used: one line saying what was expected."""


def _import(name: str):
    """The ``detect`` extra's packages, with one line saying how to install them."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise DetectError(
            f"detect_score needs onnxruntime, opencv-python-headless and pycocotools: "
            f"pip install 'cptrans-jax[detect]' ({e})"
        ) from None


@dataclasses.dataclass
class Detections:
    """One frame's detections: xyxy boxes in frame pixels, scores, detector class indices."""

    boxes: np.ndarray  # (M, 4) float64
    scores: np.ndarray  # (M,) float64
    classes: np.ndarray  # (M,) int64


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """How one frame was fitted into the input: scale, then (left, top) padding."""

    gain: float
    left: int
    top: int
    height: int  # the frame's
    width: int


def letterbox(frame: np.ndarray, height: int, width: int) -> tuple[np.ndarray, Letterbox]:
    """uint8 (h, w, 3) → uint8 (height, width, 3) letterboxed (module docstring)."""
    cv2 = _import("cv2")
    h, w = frame.shape[:2]
    r = min(height / h, width / w)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    if (new_w, new_h) != (w, h):
        frame = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (width - new_w) / 2, (height - new_h) / 2
    left, top = int(round(dw - 0.1)), int(round(dh - 0.1))
    out = np.full((height, width, 3), PAD_VALUE, np.uint8)
    out[top : top + new_h, left : left + new_w] = frame
    return out, Letterbox(r, left, top, h, w)


def parse_names(text: str) -> list[str] | None:
    """Class names from a metadata string: ``{0: 'car', 1: 'bus'}`` or ``['car', 'bus']``."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, dict) and sorted(value) == list(range(len(value))):
        return [str(value[i]) for i in range(len(value))]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return None


def fit_layout(shape: Sequence[int], nc: int, layout: str = "auto", end2end: bool = False) -> str:
    """The layout an output of ``shape`` has for ``nc`` classes (module docstring).

    Raises:
        DetectError: no layout fits, two do and none was chosen, or the chosen one does not.
    """
    shape = tuple(int(s) for s in shape)
    expected = (
        f"YOLOv5 (batch, boxes, 5 + {nc} = {5 + nc}), YOLOv8 (batch, 4 + {nc} = {4 + nc}, boxes) "
        "or end2end (batch, boxes, 6)"
    )
    if len(shape) != 3:
        raise DetectError(
            f"the detector's output has shape {shape}, an unknown layout; expected {expected}"
        )
    _, a, b = shape
    fits = []
    if b == 5 + nc:
        fits.append("yolov5")
    if a == 4 + nc and b != a:
        fits.append("yolov8")
    if b == 6:
        fits.append("end2end")
    if layout != "auto":
        if layout not in LAYOUTS:
            raise DetectError(f"--layout must be auto or one of {', '.join(LAYOUTS)}")
        if layout not in fits:
            raise DetectError(
                f"the detector's output {shape} does not fit --layout {layout} with {nc} "
                f"classes; expected {expected}"
            )
        return layout
    if len(fits) > 1 and end2end and "end2end" in fits:
        return "end2end"
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise DetectError(
            f"the detector's output {shape} fits no known layout for {nc} classes; expected "
            f"{expected} (check the number of class names, or give --layout)"
        )
    raise DetectError(
        f"the detector's output {shape} fits both {' and '.join(fits)} for {nc} classes; give "
        "--layout"
    )


class YoloDetector:
    """An ONNX YOLO detector (module docstring).

    Args:
        path: the ``.onnx`` file.
        names: class names when the model's metadata has none (or to override them).
        layout: ``auto`` or one of ``LAYOUTS``.
        imgsz: input size for a model whose input has no static size nor ``imgsz`` metadata.
        batch_size: frames per run for a model with a dynamic batch axis.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        names: Sequence[str] | None = None,
        layout: str = "auto",
        imgsz: int = 640,
        batch_size: int = 8,
    ) -> None:
        ort = _import("onnxruntime")
        _import("cv2")
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"--detector {self.path} does not exist")
        wanted = ("CUDAExecutionProvider", "CPUExecutionProvider")
        providers = [p for p in ort.get_available_providers() if p in wanted]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its warnings are not the user's to fix
        try:
            self.session = ort.InferenceSession(self.path, options, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DetectError(
                f"--detector {self.path}: not a model onnxruntime can load (expected an ONNX "
                f"export of a YOLO detector): {first}"
            ) from None
        self.provider = self.session.get_providers()[0]
        meta = self.session.get_modelmeta().custom_metadata_map
        from_meta = parse_names(meta.get("names", ""))
        self.names = list(names) if names else from_meta
        if not self.names:
            raise DetectError(
                f"--detector {self.path} has no class names in its metadata; give them with "
                "--detector_names (a comma-separated list or a file with one name per line)"
            )
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4:
            raise DetectError(
                f"--detector {self.path}: input {inp.name} has shape {inp.shape}; expected "
                "(batch, 3, height, width)"
            )
        self.input_name = inp.name
        self.dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        b, _, h, w = inp.shape
        if not (isinstance(h, int) and isinstance(w, int)):
            size = parse_names(meta.get("imgsz", "")) or [imgsz, imgsz]
            h, w = int(size[0]), int(size[-1])
        self.height, self.width = h, w
        self.batch = b if isinstance(b, int) and b > 0 else batch_size
        self.dynamic_batch = not (isinstance(b, int) and b > 0)
        probe = self._run(np.zeros((self.batch, 3, h, w), self.dtype))
        self.output_shape = probe.shape
        self.layout = fit_layout(
            probe.shape, len(self.names), layout, meta.get("end2end", "") == "True"
        )
        self.inference_s = 0.0  # time in session.run, after the probe above
        self.frames = 0

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(self.session.run(None, {self.input_name: x})[0])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DetectError(
                f"--detector {self.path}: running it on a {tuple(x.shape)} batch failed "
                f"(expected a YOLO detector taking (batch, 3, {self.height}, {self.width})): "
                f"{first}"
            ) from None

    def prepare(self, frames: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Letterbox]]:
        """Letterboxed NCHW input for up to ``batch`` frames (padded to the batch)."""
        x = np.zeros((self.batch, 3, self.height, self.width), self.dtype)
        boxes = []
        for i, frame in enumerate(frames):
            image, lb = letterbox(frame, self.height, self.width)
            x[i] = image.transpose(2, 0, 1).astype(self.dtype) / self.dtype(255.0)
            boxes.append(lb)
        return x, boxes

    def infer(
        self,
        x: np.ndarray,
        letterboxes: Sequence[Letterbox],
        classes: Sequence[int],
        *,
        conf: float = 0.001,
        nms_iou: float = 0.6,
        max_det: int = 100,
    ) -> list[Detections]:
        """Runs one prepared batch; the detections of ``classes`` (detector indices) per frame."""
        start = time.perf_counter()
        out = self._run(x)
        self.inference_s += time.perf_counter() - start
        self.frames += len(letterboxes)
        return [
            self._decode(out[i], lb, np.asarray(classes, np.int64), conf, nms_iou, max_det)
            for i, lb in enumerate(letterboxes)
        ]

    def _decode(self, p, lb, classes, conf, nms_iou, max_det) -> Detections:
        p = p.astype(np.float64)
        if self.layout == "end2end":
            keep = (p[:, 4] > conf) & np.isin(p[:, 5].astype(np.int64), classes)
            boxes, scores, cls = p[keep, :4], p[keep, 4], p[keep, 5].astype(np.int64)
        else:
            if self.layout == "yolov8":
                p = p.T
                class_scores = p[:, 4:]
            else:
                class_scores = p[:, 5:] * p[:, 4:5]
            anchor, j = np.nonzero(class_scores[:, classes] > conf)
            scores, cls = class_scores[anchor, classes[j]], classes[j]
            c = p[anchor, :4]
            boxes = np.stack(
                [
                    c[:, 0] - c[:, 2] / 2,
                    c[:, 1] - c[:, 3] / 2,
                    c[:, 0] + c[:, 2] / 2,
                    c[:, 1] + c[:, 3] / 2,
                ],
                axis=1,
            )
            if len(scores) > MAX_NMS:
                top = np.argsort(-scores, kind="stable")[:MAX_NMS]
                boxes, scores, cls = boxes[top], scores[top], cls[top]
            keep = self._nms(boxes, scores, cls, conf, nms_iou)
            boxes, scores, cls = boxes[keep], scores[keep], cls[keep]
        order = np.argsort(-scores, kind="stable")[:max_det]
        boxes, scores, cls = boxes[order], scores[order], cls[order]
        # Back through the letterbox, clipped to the frame.
        boxes = (boxes - [lb.left, lb.top, lb.left, lb.top]) / lb.gain
        boxes = np.clip(boxes, 0, [lb.width, lb.height, lb.width, lb.height])
        return Detections(boxes.reshape(-1, 4), scores, cls)

    @staticmethod
    def _nms(boxes, scores, cls, conf, nms_iou) -> np.ndarray:
        if len(scores) == 0:
            return np.zeros(0, np.int64)
        cv2 = _import("cv2")
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        keep = cv2.dnn.NMSBoxesBatched(
            xywh, scores.astype(np.float32), cls.astype(np.int32), float(conf), float(nms_iou)
        )
        return np.asarray(keep, np.int64).reshape(-1)
