"""Check a downloaded scene folder against the layout the builder expects; report every problem.

    python data_prep/validate.py --dataset infraredcity_lite --scene monitor \
        --manual_dir /data/InfraredCity-Lite [--layout packed|frames]

Decodes every file (so it takes about as long as reading the data once) and prints the frame
counts per folder, then each problem (missing or empty folders, files that do not decode, alpha
channels, packed files of the wrong width, frames whose size differs within a video) and notes
(non-image files the builder will ignore). Exit status 0 when the folder can be built, 1 when it
has problems, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cptrans_jax.data.layouts import DATASETS, LAYOUTS, validate_scene


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--scene", required=True)
    parser.add_argument("--manual_dir", required=True, help="folder holding <scene>/trainA, …")
    parser.add_argument("--layout", default="packed", choices=LAYOUTS)
    args = parser.parse_args(argv)
    spec = DATASETS[args.dataset]
    if args.scene not in spec.scenes:
        parser.error(f"{args.dataset} has scenes {', '.join(spec.scenes)}; got {args.scene!r}")
    scene_dir = Path(args.manual_dir) / args.scene
    problems, notes, counts = validate_scene(scene_dir, args.layout, spec.packed_frames)
    for folder, n in counts.items():
        print(f"{scene_dir / folder}: {n} frames")
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"problem: {problem}")
    if problems:
        print(f"{len(problems)} problem(s): {scene_dir} cannot be built as {args.layout} yet")
        return 1
    print(f"ok: {scene_dir} matches the {args.layout} layout of {args.dataset}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
