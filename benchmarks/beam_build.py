"""Frames/s of the data build: plain (one process) against Apache Beam's DirectRunner.

Writes a synthetic InfraredCity-Lite scene of ``--files`` pair files per split folder
(512×256, two 256² frames side by side, as the authors' files: smooth gradients plus noise, so
PNG decoding and encoding do real work), then builds it into a fresh data dir once per way and
prints a Markdown table. Needs the ``[beam]`` extra.

    python benchmarks/beam_build.py --files 150 --workers 1,2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_scene(scene_dir: Path, files: int) -> int:
    """``files`` pair files in each of trainA/B, testA/B; returns the number of frames."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 512, dtype=np.float32)[None, :, None]
    for folder in ("trainA", "trainB", "testA", "testB"):
        (scene_dir / folder).mkdir(parents=True)
        for i in range(files):
            noise = rng.normal(0, 12, (256, 512, 1 if folder.endswith("A") else 3))
            pixels = np.clip(ramp + noise + 3 * (i % 16), 0, 255).astype(np.uint8)
            Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(
                scene_dir / folder / f"{i:05d}.png"
            )
    return 4 * files * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=150, help="pair files per split folder")
    parser.add_argument("--workers", default="1,2", help="DirectRunner worker counts")
    args = parser.parse_args()

    import tensorflow_datasets as tfds

    from cptrans_jax.data import beam_build, builders

    tfds.disable_progress_bar()
    root = Path(tempfile.mkdtemp(prefix="beam_build-"))
    try:
        frames = write_scene(root / "manual" / "monitor", args.files)
        ways: list[tuple[str, object]] = [("plain, one process", None)]
        ways.append(("Beam DirectRunner, in this process", ["--direct_running_mode=in_memory"]))
        for n in (int(w) for w in args.workers.split(",")):
            flags = [f"--direct_num_workers={n}", "--direct_running_mode=multi_processing"]
            ways.append((f"Beam DirectRunner, {n} worker process{'es' if n > 1 else ''}", flags))
        rows = []
        for i, (name, flags) in enumerate(ways):
            options = None if flags is None else beam_build.pipeline_options("DirectRunner", flags)
            t0 = time.perf_counter()
            builders.build(
                "infraredcity_lite",
                "monitor",
                "packed",
                root / "manual",
                root / f"data{i}",
                beam_options=options,
                print_fn=lambda _: None,
            )
            seconds = time.perf_counter() - t0
            rows.append((name, seconds))
            print(f"done: {name} ({seconds:.1f} s)", flush=True)
        print(f"\n{frames} frames (256², from {frames // 2} pair files), build incl. indexing\n")
        print("| build | s | frames/s |")
        print("|---|---|---|")
        for name, seconds in rows:
            print(f"| {name} | {seconds:.1f} | {frames / seconds:.1f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
