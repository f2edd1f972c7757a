"""The timing half of ``benchmarks/device_check.sh``: iteration and translate speed with MFU.

Runs ``benchmarks/iteration.py`` (one process per row) for CPTrans and ROMA at each batch size
in float32 (matmul precision highest: float32-exact products, as the parity tests need) and
bfloat16 (precision default), then ``benchmarks/translate_speed.py``, and prints a Markdown
table. MFU is XLA's FLOP count of the step over its median time, against the GPU's dense peak
for that dtype (``PEAK_TFLOPS``, by the name ``nvidia-smi`` reports; ``--peak_tflops`` for
another GPU). On CPU (``--cpu``) the reference is this CPU's measured 2048² float32 matmul rate
instead (no published peak), so the column is "of the matmul rate", not MFU.

Translate runs first (given at most half the budget), then the iteration rows in order of
interest (batch 1 first) until ``--budget`` seconds are spent: a row that would not fit, or is
stopped when the budget runs out, is listed as such rather than failed, so the whole check
stays inside its time limit.

    python benchmarks/device_check.py                  # GPU: 256², batch 1, 4, 8
    python benchmarks/device_check.py --cpu            # smoke: tiny networks, 32², batch 1, 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# Dense (no sparsity) peak TFLOP/s from the vendors' data sheets: (float32 without tensor
# cores, bfloat16 tensor cores). float32 rows run at precision highest, which rules out TF32,
# so their reference is the plain float32 peak. Checked in order: the first name found in
# nvidia-smi's name wins ("H100 PCIe" before "H100", "L40S" before "L4").
PEAK_TFLOPS: list[tuple[str, float, float]] = [
    ("H200", 67.0, 989.0),
    ("H100 PCIe", 51.0, 756.0),
    ("H100", 67.0, 989.0),  # SXM
    ("A100", 19.5, 312.0),
    ("L40S", 91.6, 362.0),
    ("L4", 30.3, 121.0),
]
METHODS = ("cptrans", "roma")
POLICIES = {"float32": "highest", "bfloat16": "default"}


def gpu_name() -> str | None:
    """The first GPU's name from nvidia-smi, or None without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if lines else None


def peak_for(name: str) -> tuple[float, float] | None:
    """(float32, bfloat16) dense peak TFLOP/s of the GPU called ``name``, if listed."""
    for key, fp32, bf16 in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return fp32, bf16
    return None


def cpu_matmul_tflops() -> float:
    """This CPU's 2048² float32 matmul rate in XLA, TFLOP/s (the --cpu reference)."""
    sys.path.insert(0, HERE)
    from iteration import matmul_rates

    return matmul_rates()["xla"] / 1e3


def run_json(cmd: list[str], timeout: float) -> tuple[dict | None, str]:
    """The last JSON line ``cmd`` prints, or None and why not."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if out.returncode:
        tail = out.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return None, f"failed (exit {out.returncode}): {tail[0][:200]}"
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]), "") if lines else (None, "printed no result")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="smoke mode: tiny sizes on CPU")
    parser.add_argument("--budget", type=float, help="seconds for all of it (default 330; 300)")
    parser.add_argument("--batches", help="comma-separated batch sizes (default 1,4,8; 1,2)")
    parser.add_argument(
        "--peak_tflops", help="FP32,BF16 dense peak TFLOP/s of a GPU missing from the table"
    )
    args = parser.parse_args()
    budget = args.budget or (300.0 if args.cpu else 330.0)
    batches = [int(b) for b in (args.batches or ("1,2" if args.cpu else "1,4,8")).split(",")]
    size = 32 if args.cpu else 256
    start = time.monotonic()

    if args.cpu:
        device, ref = "CPU", cpu_matmul_tflops()
        peaks = (ref, ref)
        ref_label = f"MFU: % of this CPU's float32 matmul rate ({ref * 1e3:.0f} GFLOP/s)"
    else:
        device = gpu_name() or "unknown GPU"
        if args.peak_tflops:
            peaks = tuple(float(x) for x in args.peak_tflops.split(","))
        else:
            peaks = peak_for(device)
        ref_label = "MFU (of the dense peak)" if peaks else f"MFU: no peak listed for {device}"

    def mfu(tflops: float, dtype: str) -> str:
        if not peaks:
            return "n/a"
        return f"{100 * tflops / peaks[0 if dtype == 'float32' else 1]:.1f} %"

    translate = [sys.executable, os.path.join(HERE, "translate_speed.py"), "--json"]
    if args.cpu:  # a tiny video and the demo's G (still at 256²: translate resizes to it)
        translate += ["--tiny", "--frames", "8", "--batch", "2", "--reps", "1"]
        translate += ["--width", "64", "--height", "64"]
    else:
        translate += ["--frames", "64", "--batch", "8", "--reps", "3"]
    # First: it is short, and it is a row of its own that the iteration rows must not crowd out.
    trans, trans_why = run_json(translate, timeout=budget / 2)
    print(f"done: translate ({time.monotonic() - start:.0f} s)", file=sys.stderr)

    rows, last_wall = [], 0.0
    iteration = [sys.executable, os.path.join(HERE, "iteration.py"), "--json"]
    iteration += ["--size", str(size), "--iters", "1" if args.cpu else "3"]
    iteration += ["--tiny"] if args.cpu else []
    for batch in batches:
        for dtype, precision in POLICIES.items():
            for method in METHODS:
                label = (method, dtype, batch)
                left = budget - (time.monotonic() - start)
                # The previous row's wall time is the best guess for this one's.
                if left < max(last_wall, 5.0):
                    rows.append((label, None, "not run (time budget)"))
                    continue
                cmd = iteration + ["--only", method, "--batch", str(batch)]
                cmd += ["--compute_dtype", dtype, "--matmul_precision", precision]
                t0 = time.monotonic()
                row, why = run_json(cmd, timeout=left)
                last_wall = time.monotonic() - t0
                if why.startswith("timed out"):  # the budget ran out under it: not a failure
                    why = f"stopped after {last_wall:.0f} s (time budget)"
                rows.append((label, row, why))
                print(f"done: {method} {dtype} batch {batch} ({last_wall:.0f} s)", file=sys.stderr)

    print(f"\n### {device}: one training iteration, {size}², one device\n")
    print(f"{ref_label}; XLA's FLOP count; float32 at precision highest, bfloat16 at default.\n")
    print(
        "| method | dtype | batch | s / iteration | clips/s | GFLOP / iteration | GFLOP/s "
        "| MFU | compile s | XLA temp GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (method, dtype, batch), r, why in rows:
        if r is None:
            print(f"| {method} | {dtype} | {batch} | {why} | | | | | | |")
            continue
        tflops = r["gflops"] / r["sec_per_iter"] / 1e3
        print(
            f"| {method} | {dtype} | {batch} | {r['sec_per_iter']:.3f} "
            f"| {batch / r['sec_per_iter']:.2f} | {r['gflops']:.4g} | {tflops * 1e3:.4g} "
            f"| {mfu(tflops, dtype)} | {r['compile_s']:.1f} | {r['xla_temp_gib']:.2f} |"
        )
    print(f"\n### translate ({'the demo' if args.cpu else 'the paper'}'s G, 256², float32)\n")
    if trans is None:
        print(f"translate_speed.py {trans_why}")
    else:
        g_tflops = trans["ours"] * trans["gflops_per_frame"] / 1e3
        print(f"batch {trans['batch']}, G {trans['gflops_per_frame']:.1f} GFLOP/frame (XLA)\n")
        print("| what | frames/s | GFLOP/s | MFU |")
        print("|---|---|---|---|")
        g_mfu = mfu(g_tflops, "float32")
        print(f"| G alone, ours | {trans['ours']:.1f} | {g_tflops * 1e3:.4g} | {g_mfu} |")
        print(f"| G alone, PyTorch on the CPU | {trans['torch']:.1f} | | |")
        print(f"| `translate` end to end | {trans['end_to_end']:.1f} | | |")
    print(f"\n(timings took {time.monotonic() - start:.0f} s)")
    failed = [why for _, r, why in rows if r is None and "budget" not in why]
    return 1 if failed or trans is None else 0


if __name__ == "__main__":
    sys.exit(main())
