"""Evaluation-only paired truth for the demo data: each infrared layout rendered by day.

The demo's training data are unpaired (:mod:`cptrans_jax.data.demo`): the visible clips are
drawn from their own layouts. To measure whether a translation keeps the infrared's structure,
this module renders, for an infrared example, the *daytime visible scene of the same layout* —
its road band where the infrared road is, its cars and pedestrians where the warm objects are —
and the label map of that scene. Nothing here is read by training.

The truth's horizon is the infrared's (its cold sky ends there). What the infrared does not
show is fixed at the day domain's mean, the same for every scene: colours are the day domain's
mean sky, verge and asphalt; cars are red and pedestrians yellow (the infrared carries no
colour); the lane dashes follow the day scenes' rule (a static dashed centre line). The truth
has no sensor noise and no trees (the infrared layouts have none).

Labels (``LABELS``): 0 sky, 1 verge, 2 road, 3 lane mark, 4 object.
"""

from __future__ import annotations

import numpy as np

from cptrans_jax.data.demo_scenes import _IR_OBJECTS, _grid, infrared_layouts, object_radius2

LABELS = ("sky", "verge", "road", "lane mark", "object")
SKY, VERGE, ROAD, LANE, OBJECT = range(len(LABELS))

# What the infrared cannot show, at the day domain's means (visible_clips: sky colours, a 50/50
# green/brown verge, asphalt U(0.33, 0.50)). Colours in [0, 1] RGB.
SKY_TOP = np.array([0.20, 0.40, 0.80], np.float32)
SKY_LOW = np.array([0.71, 0.81, 0.94], np.float32)
VERGE_RGB = np.array([0.41, 0.475, 0.23], np.float32)
ASPHALT_RGB = np.array([0.415, 0.415, 0.415], np.float32)
LANE_RGB = np.array([0.95, 0.95, 0.95], np.float32)
CAR_RGB = np.array([0.80, 0.10, 0.10], np.float32)
PEDESTRIAN_RGB = np.array([0.90, 0.80, 0.15], np.float32)


def paired_truth(
    seed: int, indices: np.ndarray, frame_size: int, clip_length: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Day renderings and label maps of infrared examples ``indices`` of data set ``seed``.

    Returns ``(frames, labels)``: float32 (n, T, S, S, 3) in [-1, 1] and int8 (n, T, S, S)
    (``LABELS``), frame t matching frame t of ``infrared_clips(seed, indices, S, T)``.
    """
    indices = np.asarray(indices)
    if indices.ndim != 1:
        raise ValueError(f"indices must be one-dimensional, got shape {indices.shape}")
    S, T, n = int(frame_size), int(clip_length), len(indices)
    p, _ = infrared_layouts(seed, indices, S, T)
    yy, xx = _grid(S)

    def col(a: np.ndarray) -> np.ndarray:  # (n,) -> (n, 1, 1, 1)
        return a[:, None, None, None]

    horizon = col(p["horizon"])  # (n, 1, 1, 1)
    label = np.where(yy < horizon, np.int8(SKY), np.int8(VERGE))  # (n, 1, S, 1)
    label = np.broadcast_to(label, (n, 1, S, S))
    road_dist = np.abs(yy - col(p["road_y"]))  # (n, 1, S, 1)
    label = np.where(road_dist <= col(p["road_h"]), np.int8(ROAD), label)
    # The day scenes' dashed centre line (visible_clips draws it the same way).
    dash = (road_dist <= max(0.5, S / 128)) & ((xx % (S / 4)) < S / 8)
    label = np.where(dash, np.int8(LANE), label)
    label = np.broadcast_to(label, (n, T, S, S))
    is_car = np.zeros((n, T, S, S), bool)
    for o in range(_IR_OBJECTS):
        # The outline where the infrared glow's coverage is one half (r = 1).
        inside = (object_radius2(p, o, S, T) <= 1.0) & (col(p["active"][:, o]) > 0)
        label = np.where(inside, np.int8(OBJECT), label)
        is_car = np.where(inside, col(p["box"][:, o]) > 0, is_car)

    a = np.clip(yy / horizon, 0.0, 1.0)[..., None]  # (n, 1, S, 1, 1)
    sky = (1 - a) * SKY_TOP + a * SKY_LOW  # the day scenes' gradient, zenith to horizon
    rgb = np.where((label == SKY)[..., None], sky, 0.0).astype(np.float32)
    for k, colour in ((VERGE, VERGE_RGB), (ROAD, ASPHALT_RGB), (LANE, LANE_RGB)):
        rgb = np.where((label == k)[..., None], colour, rgb)
    obj = (label == OBJECT)[..., None]
    rgb = np.where(obj & is_car[..., None], CAR_RGB, rgb)
    rgb = np.where(obj & ~is_car[..., None], PEDESTRIAN_RGB, rgb)
    return rgb * 2.0 - 1.0, label


def visible_labels(
    seed: int, indices: np.ndarray, frame_size: int, clip_length: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(clips, labels) of the *unpaired* visible examples ``indices`` (``visible_clips``'s
    frames and their own label map in ``LABELS``; trees count as verge)."""
    from cptrans_jax.data.demo_scenes import _VIS_TREES, _visible

    clips, painted, horizon = _visible(seed, np.asarray(indices), frame_size, clip_length)
    yy, _ = _grid(frame_size)
    road_l = _VIS_TREES + 1
    codes = np.full(road_l + 3 + 2 * 4, OBJECT, np.int8)  # cars' bodies and windows
    codes[1:road_l] = VERGE
    codes[road_l], codes[road_l + 1] = ROAD, LANE
    label = codes[painted]
    background = np.where(yy < horizon[:, None, None, None], np.int8(SKY), np.int8(VERGE))
    return clips, np.where(painted == 0, background, label)
