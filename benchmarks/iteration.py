"""Seconds per training iteration, peak memory and FLOPs of CPTrans, its ablations and ROMA.

Full-size networks (G ngf 64 / 9 blocks, ViT-B/16-384 blocks 0–5, D 768) at 256×256, batch 1,
random weights, on whatever JAX backend is present. Each configuration runs in its own process
so its peak resident memory (``ru_maxrss``) is its own. Prints a Markdown table:

    python benchmarks/iteration.py                     # all configurations
    python benchmarks/iteration.py --only cptrans      # one of them
    python benchmarks/iteration.py --size 64 --iters 2 # a quick smoke run
    python benchmarks/iteration.py --only cptrans --compute_dtype bfloat16  # precision policy

FLOPs are XLA's own count (``compiled.cost_analysis()['flops']``) of the jitted iteration;
achieved FLOP/s = FLOPs / median seconds per iteration (compile excluded). ``--compute_dtype``
and ``--matmul_precision`` set the networks' precision policy (``train.compute_dtype`` /
``train.matmul_precision``, :mod:`cptrans_jax.precision`); the defaults are float32 / highest.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    # name: (method, variant, co_impl)
    "cptrans": ("cptrans", "full", "fast"),
    "cptrans (CO by vmap)": ("cptrans", "full", "vmap"),
    "baseline": ("cptrans", "baseline", "fast"),
    "no_co": ("cptrans", "no_co", "fast"),
    "no_ctn": ("cptrans", "no_ctn", "fast"),
    "roma": ("roma", "full", "fast"),
}


def run_one(name: str, size: int, iters: int, dtype: str, precision: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cptrans_jax.convert import init_vit_params
    from cptrans_jax.models import Discriminator, FeatureViT, Generator, vit_b16_384
    from cptrans_jax.objectives import Networks, ObjectiveConfig, cptrans_variant
    from cptrans_jax.precision import compute_dtype, matmul_precision
    from cptrans_jax.sharding import data_mesh, jit_iteration
    from cptrans_jax.steps import adam, init_train_state, make_iteration

    method, variant, co_impl = CONFIGS[name]
    if method == "roma":
        cfg = ObjectiveConfig(method="roma", use_co=False, use_ctn=False)
    else:
        cfg = cptrans_variant(variant, co_impl=co_impl)
    vit_cfg = vit_b16_384()
    policy = {"dtype": compute_dtype(dtype), "precision": matmul_precision(precision)}
    nets = Networks(
        Generator(**policy), FeatureViT(vit_cfg, **policy), Discriminator(vit_cfg.width, **policy)
    )
    g_tx, d_tx = adam(2e-6), adam(2e-6)
    state = init_train_state(nets, g_tx, d_tx, jax.random.key(0), (size, size))
    vit_params = init_vit_params(vit_cfg, jax.random.key(1))
    t = cfg.frames_per_sample
    rng = np.random.default_rng(0)
    batch = {k: jnp.asarray(rng.uniform(-1, 1, (1, t, size, size, 3)), jnp.float32) for k in "AB"}
    step = jit_iteration(make_iteration(nets, cfg, g_tx, d_tx), data_mesh(1))
    key = jax.random.key(2)

    t0 = time.perf_counter()
    compiled = step.lower(state, batch, vit_params, key).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan")))
    mem = compiled.memory_analysis()
    temp_bytes = getattr(mem, "temp_size_in_bytes", float("nan"))

    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, vit_params, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {
        "name": name,
        "policy": f"{dtype}/{precision}",
        "backend": jax.default_backend(),
        "compile_s": compile_s,
        "sec_per_iter": sec,
        "gflops": flops / 1e9,
        "gflops_per_s": flops / 1e9 / sec,
        "xla_temp_gib": temp_bytes / 2**30,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "loss_g": float(metrics["loss/g"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(CONFIGS), help="run one configuration")
    parser.add_argument("--size", type=int, default=256, help="frame size (default 256)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations (median)")
    parser.add_argument(
        "--compute_dtype", choices=("float32", "bfloat16"), default="float32",
        help="the networks' compute dtype (params, optimizer states and losses stay float32)",
    )  # fmt: skip
    parser.add_argument(
        "--matmul_precision", choices=("highest", "default"), default="highest",
        help="the networks' matmul/conv precision",
    )  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_one(
            args.only, args.size, args.iters, args.compute_dtype, args.matmul_precision
        )
        print(json.dumps(result))
        return
    names = [args.only] if args.only else list(CONFIGS)
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--child", "--only", name]
        cmd += ["--size", str(args.size), "--iters", str(args.iters)]
        cmd += ["--compute_dtype", args.compute_dtype, "--matmul_precision", args.matmul_precision]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"done: {name}", file=sys.stderr, flush=True)
    backend = rows[0]["backend"] if rows else "?"
    policy = f"{args.compute_dtype}/{args.matmul_precision}"
    print(f"\n{args.size}×{args.size}, batch 1, backend {backend}, networks {policy}\n")
    print(
        "| configuration | s / iteration | compile s | GFLOP / iteration | GFLOP/s "
        "| XLA temp GiB | peak RSS GiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['sec_per_iter']:.2f} | {r['compile_s']:.1f} | {r['gflops']:.0f} "
            f"| {r['gflops_per_s']:.1f} | {r['xla_temp_gib']:.2f} | {r['peak_rss_gib']:.2f} |"
        )


if __name__ == "__main__":
    main()
