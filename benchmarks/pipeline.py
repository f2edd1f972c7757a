"""Data benchmark: build speed and input-pipeline throughput at the paper's frame size.

    python benchmarks/pipeline.py [--files 200] [--batches 40] [--batch 8]

Writes ``--files`` synthetic InfraredCity-style pair files (512×256, smooth content plus noise
so PNG sizes are realistic) per domain into a temporary folder, builds them with
``data_prep``'s builder, then times the Grain pipeline (bicubic 286², random 256² crop,
clips of 1 and 2 frames) for several thread counts. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from cptrans_jax.data.builders import build
from cptrans_jax.data.pipeline import TFDSClipSource


def write_pairs(root: Path, files: int) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:256, 0:512]
    for folder, n in (("trainA", files), ("trainB", files), ("testA", 2), ("testB", 2)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            base = 128 + 60 * np.sin(x / (20 + i % 7)) * np.cos(y / 31)
            img = np.clip(base[..., None] + rng.normal(0, 8, (256, 512, 3)), 0, 255)
            if folder.endswith("A"):
                img = img[..., 0]
            Image.fromarray(img.astype(np.uint8)).save(root / folder / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    tfds.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_pairs(tmp / "manual" / "monitor", args.files)
        start = time.perf_counter()
        build(
            "infraredcity_lite",
            "monitor",
            "packed",
            tmp / "manual",
            tmp / "tfds",
            print_fn=lambda *_: None,
        )
        seconds = time.perf_counter() - start
        frames = 4 * (args.files + 2)
        print(f"build: {frames} frames in {seconds:.1f} s ({frames / seconds:.0f} frames/s)\n")
        print("| clip frames | threads | batch | s/batch | clips/s |")
        print("|---|---|---|---|---|")
        for clip in (1, 2):
            for threads in (1, 2, 4):
                source = TFDSClipSource(
                    dataset="infraredcity_lite",
                    scene="monitor",
                    layout="packed",
                    data_dir=tmp / "tfds",
                    clip_length=clip,
                    frame_size=256,
                    load_size=286,
                    global_batch_size=args.batch,
                    seed=0,
                    read_threads=threads,
                    print_fn=lambda *_: None,
                )
                source.next_batch()  # thread start-up
                start = time.perf_counter()
                for _ in range(args.batches):
                    source.next_batch()
                per = (time.perf_counter() - start) / args.batches
                print(f"| {clip} | {threads} | {args.batch} | {per:.3f} | {args.batch / per:.0f} |")


if __name__ == "__main__":
    main()
