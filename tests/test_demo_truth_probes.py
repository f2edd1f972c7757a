"""benchmarks/demo_truth_probes: the layout score of the demo's paired truth, degraded."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import demo_truth_probes as probes  # noqa: E402

from cptrans_jax import demo_quality as dq  # noqa: E402
from cptrans_jax.data.demo_truth import LANE, ROAD  # noqa: E402


def test_shifts_move_content_by_whole_pixels():
    x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
    down = probes.shift_down(x, 1)
    np.testing.assert_array_equal(down[:, 1:], x[:, :-1])
    np.testing.assert_array_equal(down[:, 0], x[:, 0])  # the top row repeated into the gap
    right = probes.shift_right(x, 2)
    np.testing.assert_array_equal(right[:, :, 2:], x[:, :, :2])
    np.testing.assert_array_equal(right[:, :, :2], x[:, :, 2:])  # x wraps


@pytest.fixture(scope="module")
def truth():
    _, frames, labels = dq.held_out_scenes(0, 8, 64)
    return frames, labels


def test_degraded_truth_scores(truth):
    frames, labels = truth
    results = probes.scores(probes.probes(frames, labels), labels)
    miou = {k: v[0] for k, v in results.items()}
    assert miou["truth"] == 1.0
    # Without its lane paint the truth loses the lane class and the road's union grows by the
    # lane pixels: road IoU = road / (road + lane), every other class still exact.
    per_class = results["truth without lane paint"][1]
    road, lane = int(np.sum(labels == ROAD)), int(np.sum(labels == LANE))
    assert per_class["lane mark"] == 0.0
    assert per_class["road"] == pytest.approx(road / (road + lane))
    assert per_class["sky"] == per_class["verge"] == per_class["object"] == 1.0
    blurred = [miou[f"truth blurred, σ {s} px"] for s in (0.5, 0.75, 1.0, 1.5)]
    assert all(a >= b for a, b in zip(blurred[:-1], blurred[1:], strict=True)), blurred
    assert blurred[-1] < miou["truth without lane paint"]
    assert miou["truth moved 2 px down"] < miou["truth moved 1 px down"] < 1.0
