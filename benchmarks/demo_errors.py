"""Where a demo checkpoint's layout score is lost, beyond ``demo_quality --confusion``.

    python benchmarks/demo_errors.py runs/demo [--scenes 64]

Translates the held-out scenes ``demo_quality`` scores (data seed 0, 64² frames) with the
workdir's newest checkpoint and prints (a) which class the truth's car and pedestrian pixels
were read as, (b) which truth classes the pixels wrongly read as object have, and (c) for the
sky rows just above the horizon, the share read as object and the mean colour there against
the truth's.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from cptrans_jax import demo_quality as dq
from cptrans_jax.data.demo_scenes import _IR_OBJECTS, infrared_layouts, object_radius2
from cptrans_jax.data.demo_truth import LABELS, OBJECT, SKY
from cptrans_jax.generator_checkpoint import load_generator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir")
    p.add_argument("--scenes", type=int, default=64)
    args = p.parse_args()
    n, size = args.scenes, 64
    generator, params, description = load_generator(args.workdir)
    infrared, truth, labels = dq.held_out_scenes(0, n, size)
    fake = np.asarray(jax.jit(lambda q, x: generator.apply({"params": q}, x))(params, infrared))
    pred = dq.read_labels(fake)
    layout, _ = infrared_layouts(0, dq.HELD_OUT + np.arange(n), size, 1)
    shapes = {"car": np.zeros(pred.shape, bool), "pedestrian": np.zeros(pred.shape, bool)}
    for o in range(_IR_OBJECTS):
        on = (layout["active"][:, o] > 0)[:, None, None]
        inside = (object_radius2(layout, o, size, 1)[:, 0] <= 1) & on
        box = (layout["box"][:, o] > 0)[:, None, None]
        shapes["car"] |= inside & box
        shapes["pedestrian"] |= inside & ~box
    print(f"{description}, {n} held-out scenes; classes {', '.join(LABELS)}")
    for name, mask in shapes.items():
        mask &= labels == OBJECT
        share = np.bincount(pred[mask], minlength=len(LABELS)) / max(mask.sum(), 1)
        print(f"{name} pixels {mask.sum()}: read as", " ".join(f"{v:.1%}" for v in share))
    false = (pred == OBJECT) & (labels != OBJECT)
    print(
        f"pixels read as object, truth not: {false.sum()}, by truth class",
        np.bincount(labels[false], minlength=len(LABELS)).tolist(),
    )
    below = np.argmax(labels != SKY, axis=1)[:, None, :]  # first non-sky row, per column

    def rgb(frames: np.ndarray) -> str:
        return ", ".join(f"{v:.2f}" for v in ((frames + 1) / 2).mean(0))

    for d in range(-4, 0):
        row = (np.arange(size)[None, :, None] - below == d) & (labels == SKY)
        print(
            f"sky row {d} from the horizon: {(pred[row] == OBJECT).mean():.0%} read as object;"
            f" mean RGB {rgb(fake[row])}, truth {rgb(truth[row])}"
        )


if __name__ == "__main__":
    main()
