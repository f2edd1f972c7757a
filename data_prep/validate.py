"""Check a downloaded scene folder against the layout the builder expects; report every problem.

    python data_prep/validate.py --dataset infraredcity_lite --scene monitor \
        --manual_dir /data/InfraredCity-Lite [--layout packed|frames]

Decodes every file (so it takes about as long as reading the data once) and prints the frame
counts per folder, then each problem (missing or empty folders, files that do not decode, alpha
channels, packed files of the wrong width, frames whose size differs within a video), warnings
(frame folders that data_prep/video_to_frames.py marked incomplete: usable, but fewer frames than
their video announced) and notes (non-image files the builder will ignore). More than three
problems of one kind (or notes) are printed as their count and three examples. The last line
sums up and, when the folder cannot be built, names the likely fix (a tree of plain frames
checked as packed files: ``--layout frames``). Exit status 0 when the folder can be built, 1 when
it has problems, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cptrans_jax.data.layouts import (
    BAD_MODE,
    CORRUPT,
    DATASETS,
    LAYOUTS,
    NOT_PACKED,
    SIZE_DIFFERS,
    Problem,
    SceneCheck,
    validate_scene,
)

EXAMPLES = 3  # a kind seen more often is printed as a count and this many examples


def _headline(kind: str, n: int, k: int) -> str:
    """What ``n`` problems of ``kind`` are, as the head of their group."""
    return {
        CORRUPT: f"{n} files cannot be decoded (corrupt or truncated)",
        BAD_MODE: f"{n} images have an alpha channel or an unusual mode",
        NOT_PACKED: f"{n} files are not packed files of {k} frames ({k}·H wide, H high)",
        SIZE_DIFFERS: f"{n} frames differ in size from the frames before them in their video",
    }.get(kind, f"{n} problems with the folder tree")


def _fix(check: SceneCheck, k: int) -> str:
    """The likely fix for the most frequent kind of problem."""
    kinds = [p.kind for p in check.problems]
    kind = max(dict.fromkeys(kinds), key=kinds.count)
    if kind == NOT_PACKED and not sum(check.counts.values()):
        return (
            f"no file holds {k} frames side by side, so these look like folders of plain frames: "
            "run again with --layout frames (and build with --layout frames)"
        )
    return {
        CORRUPT: "copy those files again, or build with --skip_corrupt to leave them out",
        BAD_MODE: "save those images as RGB or gray, without alpha",
        NOT_PACKED: f"remove the files that are not {k} frames side by side, or lay the scene "
        "out as frame folders (--layout frames)",
        SIZE_DIFFERS: "give every frame of a video one size (data_prep/video_to_frames.py "
        "--size WxH does)",
    }.get(kind, "lay the scene out as <scene>/trainA, trainB, testA, testB (README, 'Data')")


def print_grouped(prefix: str, items: Sequence[tuple[str, str]], headline: Callable) -> None:
    """``items`` as (group, text): a group of at most EXAMPLES items one line each, a larger one
    as ``headline(group, count)`` and EXAMPLES examples (1,282 identical lines help no one)."""
    groups: dict[str, list[str]] = {}
    for group, text in items:
        groups.setdefault(group, []).append(text)
    for group, texts in groups.items():
        if len(texts) <= EXAMPLES:
            for text in texts:
                print(f"{prefix}: {text}")
            continue
        print(f"{prefix}: {headline(group, len(texts))}, e.g.:")
        for text in texts[:EXAMPLES]:
            print(f"  {text}")
        print(f"  … and {len(texts) - EXAMPLES} more")


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
    k = spec.packed_frames
    check = validate_scene(scene_dir, args.layout, k)
    for folder, n in check.counts.items():
        print(f"{scene_dir / folder}: {n} frames")
    print_grouped("note", [("", n) for n in check.notes], lambda _, n: f"{n} non-image files")
    for line in check.incomplete:
        print(f"warning: {line}")
    problems: list[Problem] = check.problems
    print_grouped("problem", [(p.kind, p.text) for p in problems], lambda g, n: _headline(g, n, k))
    incomplete = (
        f"; {len(check.incomplete)} frame folder(s) from incomplete videos (warnings above)"
        if check.incomplete
        else ""
    )
    if problems:
        print(
            f"{len(problems)} problem(s): {scene_dir} cannot be built as {args.layout} yet"
            f"{incomplete}; likely fix: {_fix(check, k)}"
        )
        return 1
    print(f"ok: {scene_dir} matches the {args.layout} layout of {args.dataset}{incomplete}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
