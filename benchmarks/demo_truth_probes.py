"""How far the demo's layout score falls when the paired truth itself is slightly degraded.

    python benchmarks/demo_truth_probes.py [--scenes 64] [--seed 0]

``python -m cptrans_jax.demo_quality`` scores a translation of the held-out infrared scenes by
reading a label map from it (nearest day-palette colour) and comparing it with the paired
truth's. At the demo's 64-px frames a region one or two pixels wide (a lane dash, a pedestrian,
the last sky row above the horizon) is a large share of its class, so the score is sensitive
to sub-pixel softness that no loss of the method sees. This prints the score of the truth
itself after degradations a translation could have — the truth without its lane paint (which
the infrared does not show), blurred (Gaussian σ in px), moved by half a pixel (the mean of it
and its one-row shift) and by whole pixels — next to the mean-day-frame baseline: the scale
against which a translation's score, and the demo's target, can be read. No network is run.
"""

from __future__ import annotations

import argparse

import numpy as np

from cptrans_jax import demo_quality as dq
from cptrans_jax.data.demo_truth import ASPHALT_RGB, LANE
from cptrans_jax.demo_vit import _blur


def shift_down(frames: np.ndarray, rows: int) -> np.ndarray:
    """(n, S, S, 3) frames moved ``rows`` px down, the top row repeated into the gap."""
    top = np.repeat(frames[:, :1], rows, axis=1)
    return np.concatenate([top, frames[:, : frames.shape[1] - rows]], axis=1)


def shift_right(frames: np.ndarray, cols: int) -> np.ndarray:
    """(n, S, S, 3) frames moved ``cols`` px right; x wraps, as the demo's scenes do."""
    return np.roll(frames, cols, axis=2)


def probes(truth: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Degraded versions (name → frames) of (n, S, S, 3) truth frames with label maps labels."""
    no_lane = np.where((labels == LANE)[..., None], ASPHALT_RGB * 2.0 - 1.0, truth)
    out: dict[str, np.ndarray] = {"truth": truth, "truth without lane paint": no_lane}
    for sigma in (0.5, 0.75, 1.0, 1.5):
        out[f"truth blurred, σ {sigma} px"] = _blur(truth, sigma)
    out["truth moved ½ px down"] = 0.5 * (truth + shift_down(truth, 1))
    for d in (1, 2):
        out[f"truth moved {d} px down"] = shift_down(truth, d)
        out[f"truth moved {d} px right"] = shift_right(truth, d)
    return out


def scores(
    frames: dict[str, np.ndarray], labels: np.ndarray
) -> dict[str, tuple[float, dict[str, float | None]]]:
    """name → (layout mIoU, IoU per class) of each entry of ``frames`` against ``labels``."""
    return {k: dq.layout_iou(dq.read_labels(v), labels) for k, v in frames.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenes", type=int, default=64, help="held-out scenes (demo_quality's)")
    p.add_argument("--seed", type=int, default=0, help="data seed (the demo's is 0)")
    args = p.parse_args()
    _, truth, labels = dq.held_out_scenes(args.seed, args.scenes, 64)
    frames = probes(truth, labels)
    frames["mean day frame (baseline)"] = np.broadcast_to(
        dq.mean_day_frame(args.seed, 64), truth.shape
    )
    results = scores(frames, labels)
    names = list(next(iter(results.values()))[1])
    print(
        f"| frames scored ({args.scenes} held-out scenes, 64²) | layout mIoU | "
        + " | ".join(names)
        + " |"
    )
    print("|---|---|" + "---|" * len(names))
    for name, (miou, per_class) in results.items():
        cells = " | ".join("-" if v is None else f"{v:.2f}" for v in per_class.values())
        print(f"| {name} | {miou:.3f} | {cells} |")
    base = results["mean day frame (baseline)"][0]
    print(f"\ntwice the baseline: {2 * base:.3f}")


if __name__ == "__main__":
    main()
