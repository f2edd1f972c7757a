"""The images evaluate reads, and the statistic that needs only them: temporal flicker.

* :func:`list_images` — every ``.png``/``.jpg``/``.jpeg``/``.bmp`` under a folder, recursively,
  in natural order of relative path (``frame_9`` before ``frame_10``).
* :func:`read_image` — 8-bit RGB by PIL's ``convert("RGB")``, as pytorch-fid reads images.
* :func:`flicker` / :func:`flicker_folders` — mean |frame_t − frame_{t−1}| over consecutive
  frames of each clip (the images directly inside one directory), in 0–255 units. No network
  and no weights: ``python -m cptrans_jax.evaluate --flicker`` without ``--inception`` runs
  only this.

Bad input is an :class:`EvalInputError`, which the command prints as one ``error:`` line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from cptrans_jax.video_io import natural_key

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


class EvalInputError(ValueError):
    """Bad input from the user (folders, images, options): reported as ``error: ...``."""


# ------------------------------------------------------------------------------- images


def list_images(folder: str | os.PathLike) -> list[str]:
    """Every image file under ``folder`` (recursively), in natural order of relative path."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "no such folder"
        raise EvalInputError(f"{folder}: {what}")
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        # Symlinked folders are followed, but each real folder is read once (no cycles).
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, name), folder))
    if not found:
        raise EvalInputError(
            f"{folder}: no images found (looked recursively for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return [os.path.join(folder, rel) for rel in sorted(found, key=natural_key)]


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def image_size(path: str) -> tuple[int, int]:
    """(H, W) from the header alone (PIL decodes lazily), so sizes are known before batching."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except _DECODE_ERRORS as e:
        raise EvalInputError(f"{path}: cannot decode image ({e})") from e
    return h, w


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB by PIL's ``convert("RGB")`` — exactly what pytorch-fid feeds its
    network, so features match that tool (unlike ``video_io.read_image``'s 16-bit scaling)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except _DECODE_ERRORS as e:
        raise EvalInputError(f"{path}: cannot decode image ({e})") from e


# ------------------------------------------------------------------------------ flicker


def flicker(folder_or_paths: str | os.PathLike | Sequence[str]) -> dict[str, float] | None:
    """Mean absolute difference of consecutive frames, in [0, 255] units.

    Frames are consecutive when they lie directly in the same directory and follow each other
    in :func:`list_images` order. Returns ``{"mean", "std", "pairs", "clips"}`` (mean/std over
    pairs of the per-pair mean |Δ| over pixels and channels), or ``None`` if there is no pair.
    """
    if isinstance(folder_or_paths, (str, os.PathLike)):
        paths = list_images(folder_or_paths)
    else:
        paths = list(folder_or_paths)
    clips: dict[str, list[str]] = {}
    for p in paths:
        clips.setdefault(os.path.dirname(p), []).append(p)
    values = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for frames in clips.values():
            if len(frames) < 2:
                continue
            previous, previous_path = None, None
            for path, image in zip(frames, pool.map(read_image, frames), strict=True):
                if previous is not None:
                    if image.shape != previous.shape:
                        raise EvalInputError(
                            f"consecutive frames differ in size: {previous_path} "
                            f"{previous.shape[:2]} and {path} {image.shape[:2]}"
                        )
                    diff = np.abs(image.astype(np.int16) - previous.astype(np.int16))
                    values.append(float(diff.mean()))
                previous, previous_path = image, path
    if not values:
        return None
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "pairs": len(values),
        "clips": sum(len(f) >= 2 for f in clips.values()),
    }


def flicker_folders(
    fake: str | os.PathLike, real: str | os.PathLike | None = None
) -> dict[str, Any]:
    """Flicker alone (``--flicker`` without ``--inception``): no network, no weights.

    Returns ``{"fake": folder, "num_fake": images, ["real", "num_real",] "flicker": {"fake":
    flicker(...), ["real": ...]}}``, the keys :func:`cptrans_jax.evaluate.format_report` reads.
    """
    result: dict[str, Any] = {"flicker": {}}
    for name, folder in (("fake", fake), ("real", real)):
        if folder is not None:
            paths = list_images(folder)
            result.update({name: os.fspath(folder), f"num_{name}": len(paths)})
            result["flicker"][name] = flicker(paths)
    return result


def flicker_lines(flickers: Mapping[str, Any]) -> list[str]:
    """One labelled report line per folder of ``{"fake"/"real": flicker(...)}``."""
    lines = []
    for name, f in flickers.items():
        value = "no consecutive frames"
        if f is not None:
            value = f"{f['mean']:.4f} ± {f['std']:.4f} ({f['pairs']} pairs, {f['clips']} clip(s))"
        lines.append(f"flicker {name} (mean |frame_t - frame_t-1|, 0-255): {value}")
    return lines
