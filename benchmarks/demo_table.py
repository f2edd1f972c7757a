"""A toy Table 1 with ground truth: CPTrans, its ablations and ROMA trained on the demo data.

Every row is the README's demo training (``configs/demo.py``, 2,048 steps) with one variant,
run once per seed (``--config.train.seed``: the networks' initialisation and every step's
randomness; the data set, ``data.seed``, is the same for all), and scored by
``python -m cptrans_jax.demo_quality`` on the held-out scenes against their paired day truth.
Printed: a Markdown table of the layout mIoU, L1 and PSNR as mean ± std over the seeds, with
the mean-day-frame baseline's figures and the wall time of a training.

    python benchmarks/demo_table.py --out runs/demo_table [--rows full,no_co] [--seeds 0,1,2]

Resumable: each (row, seed) trains into ``OUT/<row>-s<seed>`` (a stopped training resumes
from its checkpoint) and leaves its score in ``OUT/<row>-s<seed>.json``; a run whose JSON is
there is not repeated, so rerunning the command after an interruption finishes the table.
Two runners may share the cores (two demo trainings side by side run ~1.5× the rate of one):
a run whose work directory the other holds is refused by the trainer and skipped, and the
exit status says how many were. ``--table_only`` prints the table of what is there without
training anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence

# Row name → the configs/demo.py argument that trains it.
ROWS: dict[str, str] = {
    "full": "variant=full",  # CPTrans: CO + CTN
    "no_co": "variant=no_co",  # without the content-aware optimisation
    "no_ctn": "variant=no_ctn",  # without the temporal normalisation
    "baseline": "variant=baseline",  # neither (all CO weights 1, no CTN)
    "roma": "method=roma",  # ROMA on two-frame clips
}
DESCRIPTION = {
    "full": "CPTrans (CO + CTN)",
    "no_co": "w/o CO",
    "no_ctn": "w/o CTN",
    "baseline": "baseline (w/o CO, w/o CTN)",
    "roma": "ROMA",
}


def run_one(out: str, row: str, seed: int, extra: Sequence[str]) -> dict | None:
    """Trains and scores one (row, seed) unless its result is already in ``out``; None when
    the training or scoring failed (said on stderr; e.g. another runner holds its work
    directory, so two runners with overlapping seeds share the table's work)."""
    name = f"{row}-s{seed}"
    result_path = os.path.join(out, f"{name}.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    workdir = os.path.join(out, name)
    train = [
        sys.executable,
        "-m",
        "cptrans_jax.train",
        f"--config=configs/demo.py:{ROWS[row]}",
        f"--workdir={workdir}",
        f"--config.train.seed={seed}",
        *extra,
    ]
    print(f"[{name}] {' '.join(train[1:])}", flush=True)
    start = time.perf_counter()
    if subprocess.run(train, stdout=subprocess.DEVNULL).returncode:
        print(f"[{name}] training failed (its error is above); skipped", file=sys.stderr)
        return None
    seconds = time.perf_counter() - start
    score_path = os.path.join(out, f"{name}.score.json")
    score = [sys.executable, "-m", "cptrans_jax.demo_quality", workdir, "--json", score_path]
    if subprocess.run(score).returncode:
        print(f"[{name}] scoring failed (its error is above); skipped", file=sys.stderr)
        return None
    with open(score_path) as f:
        result = {"row": row, "seed": seed, "train_seconds": seconds, **json.load(f)}
    # Written last and atomically: a result file exists only for a finished run.
    with open(result_path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(result_path + ".tmp", result_path)
    os.remove(score_path)
    return result


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var)


def table(results: Sequence[dict]) -> str:
    """Markdown table of ``results`` (one dict per run), a row per method, in ``ROWS`` order."""

    def cell(values: Sequence[float], fmt: str) -> str:
        m, s = mean_std(values)
        return f"{m:{fmt}} ± {s:{fmt}}" if len(values) > 1 else f"{m:{fmt}}"

    lines = [
        "| method | seeds | layout mIoU | per seed | IoU sky / verge / road / lane / object | "
        "L1 | PSNR dB | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        runs = [r for r in results if r["row"] == row]
        if not runs:
            continue
        runs.sort(key=lambda r: r["seed"])
        t = [r["translation"] for r in runs]
        # GAN runs can fail outright: the seeds' values show a collapse that a std blurs.
        per_seed = ", ".join(f"{r['seed']}: {x['miou']:.2f}" for r, x in zip(runs, t, strict=True))
        ious = " / ".join(
            "-"
            if any(x["iou"][k] is None for x in t)
            else f"{mean_std([x['iou'][k] for x in t])[0]:.2f}"
            for k in t[0]["iou"]
        )
        lines.append(
            f"| {DESCRIPTION[row]} | {len(runs)} | {cell([x['miou'] for x in t], '.3f')} | "
            f"{per_seed} | {ious} | {cell([x['l1'] for x in t], '.4f')} | "
            f"{cell([x['psnr'] for x in t], '.2f')} | "
            f"{cell([r['train_seconds'] for r in runs], '.0f')} |"
        )
    if results:
        b = results[0]["baseline"]
        ious = " / ".join("-" if v is None else f"{v:.2f}" for v in b["iou"].values())
        lines.append(
            f"| mean day frame (ignores its input) | - | {b['miou']:.3f} | - | {ious} | "
            f"{b['l1']:.4f} | {b['psnr']:.2f} | - |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo_table", help="runs and results go here")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"some of {','.join(ROWS)}")
    parser.add_argument("--seeds", default="0,1,2", help="train.seed values, comma-separated")
    parser.add_argument("--table_only", action="store_true", help="print what is there")
    args, extra = parser.parse_known_args(argv)  # the rest goes to every training
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; expected some of {list(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    os.makedirs(args.out, exist_ok=True)
    results, failed = [], 0
    for seed in seeds:  # seed-major: an interrupted table has every row for the first seeds
        for row in rows:
            path = os.path.join(args.out, f"{row}-s{seed}.json")
            if args.table_only:
                if os.path.exists(path):
                    with open(path) as f:
                        results.append(json.load(f))
            else:
                result = run_one(args.out, row, seed, extra)
                if result is None:
                    failed += 1
                else:
                    results.append(result)
    print(table(results))
    if failed:
        sys.exit(f"{failed} run(s) failed or were busy elsewhere; rerun to finish the table")


if __name__ == "__main__":
    main()
