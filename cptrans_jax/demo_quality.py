"""Does a demo checkpoint keep the infrared's structure? A layout score against paired truth.

Command line::

    python -m cptrans_jax.demo_quality WORKDIR [--scenes 64] [--json OUT] [--confusion]
    python -m cptrans_jax.evaluate --demo WORKDIR [--scenes 64] [--json OUT]   # the same

``WORKDIR`` is a demo training run (``configs/demo.py``; or one of its
``checkpoints/<step>``); its newest readable checkpoint's G
translates frame 0 of ``--scenes`` held-out infrared scenes (example indices from
``HELD_OUT`` on, which training never reaches), at the run's frame size and data seed. Each is
compared with the day rendering of the same layout (:mod:`cptrans_jax.data.demo_truth`, never
seen by training). Printed:

(a) **layout mIoU**: a label map is read from the translation by the input-independent rule
    :func:`read_labels` — every pixel takes the class of its nearest colour in ``PROTOTYPES``
    (the day domain's sky, verge, asphalt, lane-paint and unambiguous car colours) — and
    compared with the truth's label map: IoU per class pooled over all scenes' pixels, and
    their mean over the classes present;
(b) the same for the **baseline**, the mean day frame (the pixel-wise mean of held-out visible
    scenes): the best a translation that ignores its input can do by copying the average;
(c) **L1** (mean absolute error in [0, 1] RGB) and **PSNR** (dB, mean over scenes, peak 1) of
    the translation and of the baseline to the paired day rendering.

A translation keeps the layout when (a) is well above (b). ``--confusion`` also prints, for the
translation, which class each truth class's pixels were read as (rows: truth; percentages of
the row), the figures that say where a score is lost; the JSON always has the pixel counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cptrans_jax.cli import run_report
from cptrans_jax.data.demo_scenes import visible_clips
from cptrans_jax.data.demo_truth import LABELS, LANE, OBJECT, ROAD, SKY, VERGE, paired_truth

# Held-out example indices start here: training step s reads examples [s·G, (s+1)·G), so no
# run reaches 2⁴⁰ of them.
HELD_OUT = 1 << 40
BASELINE_SCENES = 256  # day scenes averaged into the baseline frame

# The readout palette ([0, 1] RGB, class): the day domain's own colours — sky, verge, asphalt,
# lane paint and the seven car colours (data/demo_scenes.py's palette) plus windows. On the day
# domain's own labelled scenes (``demo_truth.visible_labels``) this rule reads mIoU ≈ 0.89:
# objects whose colour is near a background's (a blue car near the zenith's blue) are its misses.
PROTOTYPES: tuple[tuple[tuple[float, float, float], int], ...] = (
    ((0.20, 0.40, 0.80), SKY),  # zenith
    ((0.455, 0.605, 0.87), SKY),
    ((0.71, 0.81, 0.94), SKY),  # near the horizon
    ((0.30, 0.55, 0.22), VERGE),  # grass
    ((0.41, 0.475, 0.23), VERGE),
    ((0.52, 0.40, 0.24), VERGE),  # earth
    ((0.33, 0.33, 0.33), ROAD),  # asphalt, darkest to lightest
    ((0.415, 0.415, 0.415), ROAD),
    ((0.50, 0.50, 0.50), ROAD),
    ((0.95, 0.95, 0.95), LANE),
    ((0.80, 0.10, 0.10), OBJECT),  # cars: red
    ((0.15, 0.25, 0.75), OBJECT),  # blue
    ((0.90, 0.80, 0.15), OBJECT),  # yellow (and the truth's pedestrians)
    ((0.92, 0.92, 0.92), OBJECT),  # white
    ((0.08, 0.08, 0.10), OBJECT),  # black
    ((0.65, 0.67, 0.70), OBJECT),  # silver
    ((0.10, 0.50, 0.25), OBJECT),  # green
    ((0.15, 0.15, 0.15), OBJECT),  # windows
)


def read_labels(frames: np.ndarray) -> np.ndarray:
    """Label map (…, H, W) int8 of frames (…, H, W, 3) in [-1, 1]: nearest ``PROTOTYPES``."""
    frames = np.asarray(frames, np.float32)
    if frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (..., H, W, 3) RGB, got shape {frames.shape}")
    colours = np.array([c for c, _ in PROTOTYPES], np.float32)
    classes = np.array([k for _, k in PROTOTYPES], np.int8)
    rgb = (frames + 1.0) / 2.0
    d2 = np.sum(np.square(rgb[..., None, :] - colours), axis=-1)  # (..., P)
    return classes[np.argmin(d2, axis=-1)]


def confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(len(LABELS), len(LABELS)) int64 pixel counts: row = truth class, column = read class."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"label maps differ in shape: {pred.shape} vs {truth.shape}")
    k = len(LABELS)
    pairs = truth.astype(np.int64).ravel() * k + pred.astype(np.int64).ravel()
    return np.bincount(pairs, minlength=k * k).reshape(k, k)


def layout_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, dict[str, float | None]]:
    """(mIoU, IoU per class) of label maps of the same shape, pooled over all their pixels.

    A class absent from both has no IoU (``None``) and is left out of the mean.
    """
    return iou_from_confusion(confusion(pred, truth))


def iou_from_confusion(counts: np.ndarray) -> tuple[float, dict[str, float | None]]:
    """:func:`layout_iou` from a :func:`confusion` matrix: per class, the diagonal over the
    union (its row plus its column less the diagonal)."""
    counts = np.asarray(counts, np.int64)
    per_class: dict[str, float | None] = {}
    for k, name in enumerate(LABELS):
        union = int(counts[k].sum() + counts[:, k].sum() - counts[k, k])
        per_class[name] = None if union == 0 else int(counts[k, k]) / union
    present = [v for v in per_class.values() if v is not None]
    return float(np.mean(present)), per_class


def pixel_errors(frames: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(L1 in [0, 1] units, PSNR in dB with peak 1, mean over images) of (N, H, W, 3) frames."""
    diff = (np.asarray(frames, np.float64) - np.asarray(truth, np.float64)) / 2.0
    mse = np.mean(np.square(diff), axis=(1, 2, 3))
    psnr = 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))
    return float(np.mean(np.abs(diff))), float(np.mean(psnr))


def held_out_scenes(
    seed: int, num_scenes: int, frame_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(infrared, truth frames, truth labels) of the held-out scenes: frame 0 of each."""
    from cptrans_jax.data.demo_scenes import infrared_clips

    idx = HELD_OUT + np.arange(num_scenes, dtype=np.int64)
    truth, labels = paired_truth(seed, idx, frame_size, 1)
    return infrared_clips(seed, idx, frame_size, 1)[:, 0], truth[:, 0], labels[:, 0]


def mean_day_frame(seed: int, frame_size: int, num_scenes: int = BASELINE_SCENES) -> np.ndarray:
    """The baseline: the pixel-wise mean (S, S, 3) of held-out day scenes."""
    idx = HELD_OUT + np.arange(num_scenes, dtype=np.int64)
    return visible_clips(seed, idx, frame_size, 1)[:, 0].mean(axis=0)


def score(frames: np.ndarray, truth: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """The layout score and pixel errors of translations (N, S, S, 3) against the truth."""
    counts = confusion(read_labels(frames), labels)  # one pass over the pixels for both
    miou, per_class = iou_from_confusion(counts)
    l1, psnr = pixel_errors(frames, truth)
    return {"miou": miou, "iou": per_class, "l1": l1, "psnr": psnr, "confusion": counts.tolist()}


def _demo_config(workdir: str) -> dict:
    """The run's config.json: in ``workdir``, or above a ``checkpoints/<step>`` given instead."""
    path = os.path.abspath(workdir)
    run = path
    if os.path.basename(os.path.dirname(path)) == "checkpoints":  # <workdir>/checkpoints/<step>
        run = os.path.dirname(os.path.dirname(path))
    elif os.path.basename(path) == "checkpoints":
        run = os.path.dirname(path)
    path = os.path.join(run, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{workdir} is not a training work directory: it has no config.json")
    try:
        with open(path) as f:
            config = json.load(f)
        data = config["data"]
        int(data["seed"]), int(data["frame_size"])
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(
            f"{path}: not a training config with data.seed and data.frame_size ({e!r})"
        ) from e
    if data.get("name") != "demo":
        raise ValueError(
            f"{workdir} trained on data set {data.get('name')!r}, not the demo: the layout "
            "score needs the demo's paired truth"
        )
    return config


def score_translator(
    translate: Callable[[np.ndarray], np.ndarray], seed: int, frame_size: int, num_scenes: int
) -> dict[str, Any]:
    """Scores ``translate`` ((N, S, S, 3) infrared in [-1, 1] → day frames in [-1, 1]) and the
    mean-day-frame baseline on ``num_scenes`` held-out scenes of data set ``seed``."""
    if num_scenes < 1:
        raise ValueError(f"the number of scenes must be >= 1, got {num_scenes}")
    infrared, truth, labels = held_out_scenes(seed, num_scenes, frame_size)
    fake = np.clip(np.asarray(translate(infrared), np.float32), -1.0, 1.0)
    if fake.shape != truth.shape:
        raise ValueError(f"translations have shape {fake.shape}, expected {truth.shape}")
    baseline = np.broadcast_to(mean_day_frame(seed, frame_size), truth.shape)
    return {
        "scenes": num_scenes,
        "frame_size": frame_size,
        "translation": score(fake, truth, labels),
        "baseline": score(baseline, truth, labels),
    }


def evaluate_demo(workdir: str, num_scenes: int = 64, batch_size: int = 16) -> dict[str, Any]:
    """Translates held-out demo scenes with ``workdir``'s newest checkpoint and scores them
    and the mean-day-frame baseline (module docstring)."""
    import jax

    from cptrans_jax.generator_checkpoint import load_generator

    if num_scenes < 1:
        raise ValueError(f"--scenes must be >= 1, got {num_scenes}")
    config = _demo_config(workdir)
    seed, size = int(config["data"]["seed"]), int(config["data"]["frame_size"])
    generator, params, description = load_generator(workdir)
    apply = jax.jit(lambda p, x: generator.apply({"params": p}, x))

    def translate(infrared: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                np.asarray(apply(params, infrared[i : i + batch_size]))
                for i in range(0, len(infrared), batch_size)
            ]
        )

    return {"checkpoint": description, **score_translator(translate, seed, size, num_scenes)}


def format_confusion(counts: Sequence[Sequence[int]]) -> str:
    """The confusion matrix as text: a row per truth class, its pixels' read classes in %."""
    counts = np.asarray(counts, np.int64)
    width = max(len(k) for k in LABELS)
    head = "truth: pixels"
    lines = [f"{head:>{width + 9}} " + " ".join(f"{k:>9}" for k in LABELS)]
    for name, row in zip(LABELS, counts, strict=True):
        total = int(row.sum())
        cells = (f"{100 * c / total:8.1f}%" if total else f"{'-':>9}" for c in row)
        lines.append(f"{name:>{width}} {total:8d} " + " ".join(cells))
    return "\n".join(lines)


def format_report(result: dict[str, Any], with_confusion: bool = False) -> str:
    def line(name: str, s: dict[str, Any]) -> str:
        classes = " ".join(f"{k}={'-' if v is None else f'{v:.3f}'}" for k, v in s["iou"].items())
        return (
            f"{name}: layout mIoU {s['miou']:.3f} | L1 {s['l1']:.4f} | PSNR {s['psnr']:.2f} dB"
            f" | IoU {classes}"
        )

    t, b = result["translation"], result["baseline"]
    ratio = t["miou"] / b["miou"] if b["miou"] > 0 else float("inf")
    lines = [
        f"demo quality of {result['checkpoint']} on {result['scenes']} held-out scenes "
        f"({result['frame_size']}×{result['frame_size']})",
        line("translation", t),
        line("baseline (mean day frame)", b),
        f"layout mIoU ratio translation/baseline: {ratio:.2f}",
    ]
    if with_confusion:
        lines += ["translation's pixels by truth class (pixels, then % read as):"]
        lines += [format_confusion(t["confusion"])]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cptrans_jax.demo_quality",
        description="Layout score of a demo run's translations against paired day truth.",
    )
    p.add_argument("workdir", help="a demo training work directory (configs/demo.py)")
    p.add_argument("--scenes", type=int, default=64, help="held-out scenes (default 64)")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument(
        "--confusion",
        action="store_true",
        help="also print which class each truth class's pixels were read as",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # GeneratorCheckpointError is a ValueError: a message, not a traceback.
    return run_report(
        lambda: evaluate_demo(args.workdir, args.scenes),
        lambda result: format_report(result, args.confusion),
        json_path=args.json,
    )


if __name__ == "__main__":
    sys.exit(main())
