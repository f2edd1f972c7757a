"""Tiny ONNX "detectors" built with the onnx helpers: fixed, known outputs.

The output is a constant table plus ``mean(image) × shift`` on the score entries, so every
frame gets the same boxes and a frame's brightness moves all its scores by the same amount (a
white frame's by ``shift``, a black frame's by 0): scores differ between frames and the
ranking that AP depends on is known.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save_model(
    path,
    table: np.ndarray,
    score_mask: np.ndarray,
    *,
    names: list[str] | None,
    input_hw: tuple[int, int] = (64, 64),
    batch: int | None = 1,
    extra_metadata: dict[str, str] | None = None,
) -> None:
    """An ONNX model with input ``images`` (batch, 3, H, W) and output ``output0`` =
    ``table[None] + mean(images, per frame) · score_mask[None]`` of shape (batch, *table.shape).

    ``batch=None`` makes the batch axis dynamic; ``names`` goes into the metadata as
    Ultralytics writes it (``{0: 'car', …}``); None leaves it out.
    """
    table = np.asarray(table, np.float32)[None]
    mask = np.asarray(score_mask, np.float32)[None]
    batch_dim = batch if batch is not None else "batch"
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "axes12"], ["mean3"]),
        helper.make_node("Mul", ["mean3", "mask"], ["shift"]),
        helper.make_node("Add", ["table", "shift"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch_dim, 3, *input_hw])],
        [
            helper.make_tensor_value_info(
                "output0", TensorProto.FLOAT, [batch_dim, *table.shape[1:]]
            )
        ],
        initializer=[
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(mask, "mask"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime of any recent release reads
    metadata = dict(extra_metadata or {})
    if names is not None:
        metadata["names"] = str(dict(enumerate(names)))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


# (class, score, cx, cy, w, h) in input pixels of a 64×64 model: the candidates of every frame.
CANDIDATES = [
    (0, 0.90, 16, 16, 16, 16),  # car at A = (8, 8)-(24, 24)
    (0, 0.85, 17, 16, 16, 16),  # car at A shifted 1 px: IoU 0.88 with A, suppressed by NMS
    (0, 0.80, 48, 16, 16, 16),  # car at B = (40, 8)-(56, 24)
    (0, 0.70, 16, 48, 16, 16),  # car at C = (8, 40)-(24, 56)
    (1, 0.60, 46, 46, 28, 28),  # bus at D = (32, 32)-(60, 60)
    (2, 0.0005, 32, 32, 10, 10),  # truck below the 0.001 score threshold
]
NAMES = ["car", "bus", "truck"]
ANCHORS = 10  # the rest score 0 (so no shape fits two layouts)
SHIFT = -0.05  # a white frame's scores are 0.05 lower than a black frame's


def yolov8_table(candidates=CANDIDATES, nc: int = 3, anchors: int = ANCHORS):
    """(4 + nc, anchors) and its score mask: Ultralytics' YOLOv8 layout."""
    table = np.zeros((4 + nc, anchors), np.float32)
    mask = np.zeros_like(table)
    for k, (c, s, cx, cy, w, h) in enumerate(candidates):
        table[:4, k] = (cx, cy, w, h)
        table[4 + c, k] = s
        mask[4 + c, k] = SHIFT
    return table, mask


def yolov5_table(candidates=CANDIDATES, nc: int = 3, anchors: int = ANCHORS):
    """(anchors, 5 + nc): objectness = the score, a one-hot class probability; the shift is on
    the objectness, so the score (objectness × probability) moves by it."""
    table = np.zeros((anchors, 5 + nc), np.float32)
    mask = np.zeros_like(table)
    for k, (c, s, cx, cy, w, h) in enumerate(candidates):
        table[k, :4] = (cx, cy, w, h)
        table[k, 4] = s
        table[k, 5 + c] = 1.0
        mask[k, 4] = SHIFT
    return table, mask


def end2end_table(candidates=CANDIDATES, rows: int = ANCHORS):
    """(rows, 6) x1, y1, x2, y2, score, class — after the model's own NMS, so without the
    suppressed duplicate."""
    kept = [cand for k, cand in enumerate(candidates) if k != 1]
    table = np.zeros((rows, 6), np.float32)
    mask = np.zeros_like(table)
    for k, (c, s, cx, cy, w, h) in enumerate(kept):
        table[k] = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, s, c)
        mask[k, 4] = SHIFT
    return table, mask
