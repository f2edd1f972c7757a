"""AP per class, computed by pycocotools (the COCO evaluation), at one IoU threshold.

The definition is COCO's: detections of a class over all frames are ranked by score, each is
matched greedily to the unmatched ground-truth box of highest IoU ≥ the threshold in its frame,
the precision envelope (precision made non-increasing in recall) is sampled at the 101 recall
points 0, 0.01, …, 1 and averaged; a recall point beyond the highest recall reached counts 0.
This is ``COCOeval``'s AP with ``iouThrs = [iou]``, area range ``all`` and ``maxDets`` =
``max_det`` — at 0.5 the "AP50" column of COCO tables (and of Ultralytics' ``mAP50``, which
interpolates the same 101 points). A class without any ground-truth box has no AP (None) and is
left out of the mean, as COCO does.

Only the bookkeeping is ours: ground truth and detections are handed to pycocotools as
in-memory COCO data sets and its ``precision`` array is read.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

from cptrans_jax.detection.yolo import Detections, _import

DEFINITION = "COCO 101-point interpolated AP (pycocotools COCOeval)"


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]):
    coco_module = _import("pycocotools.coco")
    coco = coco_module.COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):  # "creating index..."
        coco.createIndex()
    return coco


def _annotation(i: int, image: int, box: np.ndarray, category: int, **extra) -> dict:
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    return {
        "id": i,
        "image_id": image,
        "category_id": category,
        "bbox": [x1, y1, w, h],
        "area": w * h,
        "iscrowd": 0,
        **extra,
    }


def average_precision(
    truth: Sequence[tuple[np.ndarray, np.ndarray]],
    detections: Sequence[Detections],
    num_classes: int,
    *,
    iou: float = 0.5,
    max_det: int = 100,
) -> tuple[list[float | None], float | None]:
    """(AP of each class, mean over the classes with ground truth) (module docstring).

    Args:
        truth: per frame, (xyxy boxes (K, 4) in pixels, class indices (K,) in 0..num_classes-1).
        detections: per frame, detections whose ``classes`` are in 0..num_classes-1.
        num_classes: the classes scored.
        iou: the IoU threshold of a match.
        max_det: detections per frame considered (the highest scores).
    """
    cocoeval = _import("pycocotools.cocoeval")
    images = [{"id": k + 1} for k in range(len(truth))]
    categories = [{"id": c + 1} for c in range(num_classes)]
    gt, dt = [], []
    for k, ((boxes, classes), det) in enumerate(zip(truth, detections, strict=True)):
        for box, c in zip(boxes, classes, strict=True):
            gt.append(_annotation(len(gt) + 1, k + 1, box, int(c) + 1))
        for box, c, s in zip(det.boxes, det.classes, det.scores, strict=True):
            dt.append(_annotation(len(dt) + 1, k + 1, box, int(c) + 1, score=float(s)))
    evaluator = cocoeval.COCOeval(
        _coco(images, categories, gt), _coco(images, categories, dt), "bbox"
    )
    evaluator.params.iouThrs = np.array([iou])
    evaluator.params.maxDets = [max_det]
    evaluator.params.areaRng = [evaluator.params.areaRng[0]]  # "all"
    evaluator.params.areaRngLbl = ["all"]
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, :, 0, 0]  # (recall points, classes)
    per_class: list[float | None] = []
    for c in range(num_classes):
        column = precision[:, c]
        # -1: no ground truth for this class (COCO's marker).
        per_class.append(None if (column < 0).all() else float(column.mean()))
    scored = [ap for ap in per_class if ap is not None]
    return per_class, (float(np.mean(scored)) if scored else None)
