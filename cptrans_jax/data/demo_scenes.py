"""The demo's procedural scenes: night infrared and day visible street clips drawn with numpy.

The scenes are crude but have the structure the method relies on: a night infrared domain (cold
sky above a horizon, cool ground, warmer road band, bright warm pedestrians and cars) and a day
visible domain (sky gradient, gray road with lane dashes, green/brown verges, coloured cars),
with objects that move a few pixels between consecutive frames so the temporal terms (CTN, ROMA
motion) see real motion. Example k of domain d is a pure function of ``(seed, d, k, frame_size,
clip_length)`` (its own ``np.random.default_rng([seed, d, k])``).
:class:`cptrans_jax.data.demo.DemoSource` streams them for training;
:mod:`cptrans_jax.data.demo_truth` renders the infrared layouts by day for evaluation.
"""

from __future__ import annotations

import numpy as np

# Stream tags mixed into the RNG seeds so the two domains (and demo.py's pairing permutation,
# tag 2) never share random numbers.
INFRARED = 0
VISIBLE = 1

# Fixed object slots per scene (unused ones are inactive), so parameters stack into arrays and a
# whole batch renders in one vectorised pass.
_IR_OBJECTS = 5
_VIS_CARS = 4
_VIS_TREES = 3

# Day car colours in [0, 1] RGB: red, blue, yellow, white, black, silver, green.
_CAR_PALETTE = np.array(
    [
        [0.80, 0.10, 0.10],
        [0.15, 0.25, 0.75],
        [0.90, 0.80, 0.15],
        [0.92, 0.92, 0.92],
        [0.08, 0.08, 0.10],
        [0.65, 0.67, 0.70],
        [0.10, 0.50, 0.25],
    ],
    dtype=np.float32,
)


def _grid(frame_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, shaped to broadcast against (N, T, H, W)."""
    c = np.arange(frame_size, dtype=np.float32) + 0.5
    return c[:, None], c[None, :]  # yy (H, 1), xx (1, W)


def _radius2(
    xx: np.ndarray,
    yy: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    rx: np.ndarray,
    ry: np.ndarray,
    is_box: np.ndarray | bool,
    frame_size: int,
) -> np.ndarray:
    """Squared normalised "radius" of pixels from shapes at (cx, cy) with half-sizes (rx, ry).

    <= 1 inside. Euclidean for ellipses (pedestrians, trees), Chebyshev for boxes (cars). All of
    cx, cy, rx, ry, is_box broadcast to (N, T, 1, 1). x wraps around the frame, so an object that
    drives off one side re-enters on the other and every frame keeps its objects.
    """
    dx = (xx - cx + frame_size / 2) % frame_size - frame_size / 2
    ax, ay = np.abs(dx / rx), np.abs((yy - cy) / ry)
    if is_box is True:
        return np.maximum(ax, ay) ** 2
    if is_box is False:
        return ax * ax + ay * ay
    return np.where(is_box, np.maximum(ax, ay) ** 2, ax * ax + ay * ay)


def infrared_layouts(
    seed: int, indices: np.ndarray, frame_size: int, clip_length: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The layouts of infrared examples ``indices`` and their sensor noise.

    Returns ``(p, noise)``: ``p`` maps a parameter name to an array over the examples — scalars
    ``bg, grad, horizon, sky_cold, road_y, road_h, road_heat`` of shape (n,) and per-object
    slots ``active, box, x0, cy, rx, ry, v, heat`` of shape (n, _IR_OBJECTS) (pixel units; x
    at frame t is ``x0 + v·t``) — and ``noise`` is (n, T, S, S). :func:`infrared_clips`
    renders them; the evaluation-only paired truth (:mod:`cptrans_jax.data.demo_truth`)
    renders the same layouts by day. The draw order is part of the data set: changing it
    changes every training stream (the horizon is drawn last, so adding it changed no other).
    """
    S, T, n = frame_size, clip_length, len(indices)
    O = _IR_OBJECTS
    p = {
        k: np.empty(shape, np.float32)
        for k, shape in {
            "bg": (n,),
            "grad": (n,),
            "horizon": (n,),
            "sky_cold": (n,),
            "road_y": (n,),
            "road_h": (n,),
            "road_heat": (n,),
            "active": (n, O),
            "box": (n, O),
            "x0": (n, O),
            "cy": (n, O),
            "rx": (n, O),
            "ry": (n, O),
            "v": (n, O),
            "heat": (n, O),
        }.items()
    }
    noise = np.empty((n, T, S, S), np.float32)
    for i, k in enumerate(indices):
        rng = np.random.default_rng([seed, INFRARED, int(k)])
        # Background: cold sky at the top, slightly warmer ground towards the bottom.
        p["bg"][i] = rng.uniform(-0.85, -0.65)
        p["grad"][i] = rng.uniform(0.0, 0.15)
        # The road keeps the day's heat: a brighter horizontal band.
        road_y = rng.uniform(0.55, 0.75) * S
        road_h = rng.uniform(0.08, 0.14) * S
        p["road_y"][i], p["road_h"][i] = road_y, road_h
        p["road_heat"][i] = rng.uniform(0.10, 0.22)
        count = rng.integers(2, O + 1)
        p["active"][i] = np.arange(O) < count
        box = rng.random(O) < 0.5  # cars (boxes) or pedestrians (ellipses)
        p["box"][i] = box
        p["x0"][i] = rng.uniform(0.0, S, O)
        # Cars drive inside the road band; pedestrians stand on its edges (the pavements).
        car_y = road_y + rng.uniform(-0.5, 0.5, O) * road_h
        ped_rx, ped_ry = rng.uniform(0.022, 0.035, O) * S, rng.uniform(0.07, 0.10, O) * S
        car_rx, car_ry = rng.uniform(0.07, 0.11, O) * S, rng.uniform(0.035, 0.055, O) * S
        edge = np.where(rng.random(O) < 0.5, -1.0, 1.0)
        ped_y = road_y + edge * road_h - 0.8 * ped_ry
        p["cy"][i] = np.where(box, car_y, ped_y)
        p["rx"][i] = np.where(box, car_rx, ped_rx)
        p["ry"][i] = np.where(box, car_ry, ped_ry)
        # A few pixels per frame at 64², scaled with the frame; pedestrians walk slower.
        speed = rng.uniform(1.0, 3.0, O) * (S / 64) * np.where(box, 1.0, 0.5)
        p["v"][i] = speed * np.where(rng.random(O) < 0.5, -1.0, 1.0)
        p["heat"][i] = rng.uniform(0.35, 0.95, O)
        noise[i] = rng.standard_normal((T, S, S), dtype=np.float32)
        # The horizon: the clear night sky is the coldest thing in long-wave infrared, a
        # sharp step below the ground's emission. Drawn last so the other parameters keep
        # their values; the same range as the day scenes' horizons, below the road's top.
        p["horizon"][i] = min(rng.uniform(0.30, 0.45) * S, road_y - road_h - 2.0)
        p["sky_cold"][i] = rng.uniform(0.12, 0.20)
    return p, noise


def object_radius2(
    p: dict[str, np.ndarray], o: int, frame_size: int, clip_length: int
) -> np.ndarray:
    """(n, T, S, S) normalised squared radius of infrared object slot ``o`` (<= 1 inside)."""
    S = frame_size
    yy, xx = _grid(S)
    t = np.arange(clip_length, dtype=np.float32)[None, :, None, None]

    def at(key: str) -> np.ndarray:  # (n, O) -> (n, 1, 1, 1)
        return p[key][:, o, None, None, None]

    cx = at("x0") + at("v") * t
    return _radius2(xx, yy, cx, at("cy"), at("rx"), at("ry"), at("box") > 0, S)


def infrared_clips(seed: int, indices: np.ndarray, frame_size: int, clip_length: int) -> np.ndarray:
    """Infrared examples ``indices``: float32 (len(indices), T, S, S, 3) in [-1, 1], gray."""
    S, T, n = frame_size, clip_length, len(indices)
    p, noise = infrared_layouts(seed, indices, S, T)
    yy, _ = _grid(S)

    def col(a: np.ndarray) -> np.ndarray:  # (n,) -> (n, 1, 1, 1)
        return a[:, None, None, None]

    img = col(p["bg"]) + col(p["grad"]) * (yy / S)  # (n, 1, S, 1)
    img = img - col(p["sky_cold"]) * (yy < col(p["horizon"]))
    road = (np.abs(yy - col(p["road_y"])) <= col(p["road_h"])).astype(np.float32)
    img = np.broadcast_to(img + col(p["road_heat"]) * road, (n, T, S, S)).copy()
    for o in range(_IR_OBJECTS):
        r2 = object_radius2(p, o, S, T)
        # Heat glows: coverage falls off smoothly around the outline (r ≈ 0.7 .. 1.2).
        m = np.clip(1.5 - r2, 0.0, 1.0) * col(p["active"][:, o])
        img += m * (col(p["heat"][:, o]) - img)  # painter's order: later objects occlude
    img += 0.03 * noise  # sensor noise, independent per frame
    np.clip(img, -1.0, 1.0, out=img)
    return np.repeat(img[..., None], 3, axis=-1)


def visible_clips(seed: int, indices: np.ndarray, frame_size: int, clip_length: int) -> np.ndarray:
    """Visible examples ``indices``: float32 (len(indices), T, S, S, 3) in [-1, 1], RGB."""
    return _visible(seed, indices, frame_size, clip_length)[0]


def _visible(
    seed: int, indices: np.ndarray, frame_size: int, clip_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clips, painter's label map (n, T, S, S) int8, horizon (n,)) of visible ``indices``.

    Labels: 0 background (sky above the horizon, verge below), 1.._VIS_TREES trees, then road,
    lane dash and (body, window) per car.
    """
    S, T, n = frame_size, clip_length, len(indices)
    C, R = _VIS_CARS, _VIS_TREES
    f32 = np.float32
    horizon, road_y, road_h = (np.empty(n, f32) for _ in range(3))
    sky_top, sky_low, verge_far, verge_near, asphalt = (np.empty((n, 3), f32) for _ in range(5))
    car_on, car_x0, car_y, car_rx, car_ry, car_v = (np.empty((n, C), f32) for _ in range(6))
    car_rgb = np.empty((n, C, 3), f32)
    tree_on, tree_x, tree_y, tree_r = (np.empty((n, R), f32) for _ in range(4))
    tree_rgb = np.empty((n, R, 3), f32)
    noise = np.empty((n, T, S, S, 3), f32)
    green, brown = np.array([0.30, 0.55, 0.22], f32), np.array([0.52, 0.40, 0.24], f32)
    for i, k in enumerate(indices):
        rng = np.random.default_rng([seed, VISIBLE, int(k)])
        horizon[i] = rng.uniform(0.30, 0.45) * S
        sky_top[i] = np.array([0.20, 0.40, 0.80]) + rng.uniform(-0.08, 0.08, 3)
        sky_low[i] = np.array([0.72, 0.82, 0.95]) + rng.uniform(-0.06, 0.04, 3)
        # Verges between green grass and brown earth, a different mix on each side of the road.
        mix = rng.uniform(0.0, 1.0, 2)[:, None]
        verge_far[i], verge_near[i] = (1 - mix) * green + mix * brown
        road_y[i] = rng.uniform(0.62, 0.78) * S
        road_h[i] = rng.uniform(0.08, 0.13) * S
        asphalt[i] = rng.uniform(0.33, 0.50)
        car_on[i] = np.arange(C) < rng.integers(1, C + 1)
        car_x0[i] = rng.uniform(0.0, S, C)
        car_y[i] = road_y[i] + rng.uniform(-0.45, 0.45, C) * road_h[i]
        car_rx[i] = rng.uniform(0.07, 0.11, C) * S
        car_ry[i] = rng.uniform(0.035, 0.05, C) * S
        car_v[i] = rng.uniform(1.0, 3.0, C) * (S / 64) * np.where(rng.random(C) < 0.5, -1, 1)
        car_rgb[i] = _CAR_PALETTE[rng.integers(0, len(_CAR_PALETTE), C)] + rng.uniform(
            -0.05, 0.05, (C, 3)
        )
        # Static trees on the far verge, between the horizon and the road.
        tree_on[i] = np.arange(R) < rng.integers(0, R + 1)
        tree_r[i] = rng.uniform(0.04, 0.08, R) * S
        tree_x[i] = rng.uniform(0.0, S, R)
        tree_y[i] = horizon[i] + rng.uniform(0.0, 0.6, R) * (road_y[i] - road_h[i] - horizon[i])
        tree_rgb[i] = np.array([0.12, 0.35, 0.12]) + rng.uniform(-0.05, 0.05, (R, 3))
        noise[i] = rng.standard_normal((T, S, S, 3), dtype=f32)

    yy, xx = _grid(S)

    def col(a: np.ndarray) -> np.ndarray:  # (n,) -> (n, 1, 1, 1); (n, 3) -> (n, 1, 1, 1, 3)
        return a.reshape(n, 1, 1, 1, *a.shape[1:])

    # Smooth background (n, 1, S, 1, 3): sky gradient above the horizon, verges below it.
    y5 = yy[None, None, :, :, None]  # (1, 1, S, 1, 1)
    hz = col(horizon)[..., None]
    a = np.clip(y5 / hz, 0.0, 1.0)
    sky = (1 - a) * col(sky_top) + a * col(sky_low)
    ground = np.where(y5 > col(road_y)[..., None], col(verge_near), col(verge_far))
    background = np.where(y5 >= hz, ground, sky) * 2.0 - 1.0  # [0, 1] colours -> [-1, 1]

    # Everything else is flat-coloured, so it is drawn as a label map (n, T, S, S) into a
    # per-example palette and coloured by one gather, instead of blending full RGB frames once
    # per shape (which made 256² batches several times slower). Labels in painter's order:
    # 0 background, 1..R trees, then road, lane dash, and (body, window) per car.
    road_l, dash_l = R + 1, R + 2
    palette = np.empty((n, R + 3 + 2 * C, 3), f32)
    palette[:, 0] = 0.0  # never read: label 0 takes the background
    palette[:, 1 : R + 1] = tree_rgb
    palette[:, road_l] = asphalt
    palette[:, dash_l] = 0.95
    palette[:, dash_l + 1 :: 2] = car_rgb
    palette[:, dash_l + 2 :: 2] = 0.15  # windows
    palette = palette * 2.0 - 1.0

    label = np.zeros((n, 1, S, S), np.int8)
    for r in range(R):
        r2 = _radius2(xx, yy, col(tree_x[:, r]), col(tree_y[:, r]), col(tree_r[:, r]),
                      col(tree_r[:, r]), False, S)  # fmt: skip
        label = np.where((r2 <= 1.0) & (col(tree_on[:, r]) > 0), np.int8(1 + r), label)
    road_dist = np.abs(yy - col(road_y))  # (n, 1, S, 1)
    label = np.where(road_dist <= col(road_h), np.int8(road_l), label)
    # Dashed white centre line, static, so the moving cars are the only change between frames.
    dash = (road_dist <= max(0.5, S / 128)) & ((xx % (S / 4)) < S / 8)
    label = np.where(dash, np.int8(dash_l), label)

    t = np.arange(T, dtype=f32)[None, :, None, None]
    for c in range(C):
        on = col(car_on[:, c]) > 0
        cx = col(car_x0[:, c]) + col(car_v[:, c]) * t  # (n, T, 1, 1): the car moves
        cy, rx, ry = col(car_y[:, c]), col(car_rx[:, c]), col(car_ry[:, c])
        body = (_radius2(xx, yy, cx, cy, rx, ry, True, S) <= 1.0) & on
        label = np.where(body, np.int8(dash_l + 1 + 2 * c), label)
        # A dark window band on the upper half of the body reads as "car" even at 64².
        win = (_radius2(xx, yy, cx, cy - 0.45 * ry, 0.6 * rx, 0.3 * ry, True, S) <= 1.0) & on
        label = np.where(win, np.int8(dash_l + 2 + 2 * c), label)
    label = np.broadcast_to(label, (n, T, S, S))  # a clip with no car is still T frames

    flat_index = label + (np.arange(n, dtype=np.intp) * palette.shape[1])[:, None, None, None]
    painted = np.take(palette.reshape(-1, 3), flat_index, axis=0)  # take: ~4x fancy indexing
    img = np.where(label[..., None] > 0, painted, background)
    img += 0.02 * noise  # sensor noise, independent per frame and channel
    return np.clip(img, -1.0, 1.0, out=img), label, horizon
