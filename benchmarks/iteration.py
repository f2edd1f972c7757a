"""Seconds per training iteration, peak memory and FLOPs of CPTrans, its ablations and ROMA.

Full-size networks (G ngf 64 / 9 blocks, ViT-B/16-384 blocks 0–5, D 768) at 256×256, batch 1,
random weights, on whatever JAX backend is present. Each configuration runs in its own process
so its peak resident memory (``ru_maxrss``) is its own. Prints a Markdown table:

    python benchmarks/iteration.py                     # all configurations
    python benchmarks/iteration.py --only cptrans      # one of them
    python benchmarks/iteration.py --size 64 --iters 2 # a quick smoke run
    python benchmarks/iteration.py --against torch     # CPTrans and ROMA side by side with
                                                       # the same iteration in PyTorch
    python benchmarks/iteration.py --only cptrans --compute_dtype bfloat16  # precision policy
    python benchmarks/iteration.py --only roma --batch 8 --json  # batch 8; one JSON line a row
    python benchmarks/iteration.py --tiny --size 32 --iters 1    # the demo's tiny networks

With ``--against torch`` each configuration's child process builds the PyTorch networks of the
parity tests at full size (``benchmarks/torch_side.py``), copies their weights into ours, runs
one iteration of each on the same inputs and random draws and checks that every loss term agrees
(so both time the same work), then times the two iterations alternately, and a 2048² float32
matmul in each framework, all in that one process.

FLOPs are XLA's own count (``compiled.cost_analysis()['flops']``) of the jitted iteration;
achieved FLOP/s = FLOPs / median seconds per iteration (compile excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

CONFIGS = {
    # name: (method, variant, co_impl)
    "cptrans": ("cptrans", "full", "fast"),
    "cptrans (CO by vmap)": ("cptrans", "full", "vmap"),
    "baseline": ("cptrans", "baseline", "fast"),
    "no_co": ("cptrans", "no_co", "fast"),
    "no_ctn": ("cptrans", "no_ctn", "fast"),
    "roma": ("roma", "full", "fast"),
}


def _objective(name: str):
    from cptrans_jax.objectives import ObjectiveConfig, cptrans_variant

    method, variant, co_impl = CONFIGS[name]
    if method == "roma":
        # The tiny ViT has 36 patches, too few for ROMA's 64 local centres: the demo's 8.
        centers = {"roma_local_centers": 8} if os.environ.get("TINY") == "1" else {}
        return ObjectiveConfig(method="roma", use_co=False, use_ctn=False, **centers)
    return cptrans_variant(variant, co_impl=co_impl)


def _vit_cfg():
    """ViT-B/16-384, or with ``--tiny`` (TINY=1 in the child) the demo config's small ViT."""
    from cptrans_jax.models import vit_b16_384
    from cptrans_jax.models.vit import ViTConfig

    if os.environ.get("TINY") == "1":
        return ViTConfig(image_size=96, width=64, depth=6, num_heads=4, mlp_dim=128, local_window=3)
    return vit_b16_384()


def _networks():
    """G, ViT and D (full size, or ``--tiny``: the demo's) under the options the parent passed
    (CONV_IMPL, POLICY, TINY)."""
    from cptrans_jax.models import Discriminator, FeatureViT, Generator
    from cptrans_jax.objectives import Networks
    from cptrans_jax.precision import compute_dtype, matmul_precision

    dtype, precision = os.environ.get("POLICY", "float32/highest").split("/")
    policy = {"dtype": compute_dtype(dtype), "precision": matmul_precision(precision)}
    g_size = {"ngf": 16, "n_blocks": 3} if os.environ.get("TINY") == "1" else {}
    vit_cfg = _vit_cfg()
    return Networks(
        Generator(conv_impl=_conv_impl(), **g_size, **policy),
        FeatureViT(vit_cfg, **policy),
        Discriminator(vit_cfg.width, **policy),
    )


def _conv_impl() -> str:
    """``--conv_impl`` (passed to the child as CONV_IMPL) resolved as the trainer does."""
    import jax

    from cptrans_jax.models.generator import conv_impl_for

    return conv_impl_for(os.environ.get("CONV_IMPL", "auto"), jax.devices()[0].platform)


def _median_seconds(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_rates(n: int = 2048, reps: int = 5) -> dict:
    """GFLOP/s of an n×n float32 matmul in XLA and (if importable) in torch, alternately."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    jax.block_until_ready(mm(a))
    out = {"xla": 2 * n**3 / _median_seconds(lambda: jax.block_until_ready(mm(a)), reps) / 1e9}
    try:
        import torch
    except ImportError:
        return out
    t = torch.from_numpy(np.asarray(a))
    out["torch"] = 2 * n**3 / _median_seconds(lambda: t @ t, reps) / 1e9
    return out


def _compile(step, *args) -> tuple:
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mem = compiled.memory_analysis()
    return compiled, {
        "compile_s": compile_s,
        "gflops": float(cost.get("flops", float("nan"))) / 1e9,
        "xla_temp_gib": getattr(mem, "temp_size_in_bytes", float("nan")) / 2**30,
    }


def run_one(name: str, size: int, iters: int, batch_size: int = 1) -> dict:
    import jax
    import jax.numpy as jnp

    from cptrans_jax.convert import init_vit_params
    from cptrans_jax.sharding import data_mesh, jit_iteration
    from cptrans_jax.steps import adam, init_train_state, make_iteration

    cfg = _objective(name)
    vit_cfg = _vit_cfg()
    nets = _networks()
    g_tx, d_tx = adam(2e-6), adam(2e-6)
    state = init_train_state(nets, g_tx, d_tx, jax.random.key(0), (size, size))
    vit_params = init_vit_params(vit_cfg, jax.random.key(1))
    t = cfg.frames_per_sample
    rng = np.random.default_rng(0)
    shape = (batch_size, t, size, size, 3)
    batch = {k: jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32) for k in "AB"}
    step = jit_iteration(make_iteration(nets, cfg, g_tx, d_tx), data_mesh(1))
    key = jax.random.key(2)
    compiled, info = _compile(step, state, batch, vit_params, key)

    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, vit_params, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {
        **info,
        "name": name,
        "batch": batch_size,
        "size": size,
        "tiny": os.environ.get("TINY") == "1",
        "device": jax.devices()[0].device_kind,
        "conv_impl": _conv_impl(),
        "policy": os.environ.get("POLICY", "float32/highest"),
        "backend": jax.default_backend(),
        "sec_per_iter": sec,
        "gflops_per_s": info["gflops"] / sec,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "loss_g": float(metrics["loss/g"]),
    }


def run_against_torch(name: str, size: int, iters: int) -> dict:
    """Ours and the PyTorch iteration of the same math on the same weights, timed alternately."""
    import jax
    import jax.numpy as jnp
    import torch
    from torch_side import TorchNets, state_dicts, torch_co_closed_form, torch_iteration

    from cptrans_jax.convert import (
        discriminator_params_from_torch,
        generator_params_from_torch,
        vit_params_from_timm,
    )
    from cptrans_jax.models import vit_b16_384
    from cptrans_jax.objectives import ctn_noise_for, roma_centers_for
    from cptrans_jax.sharding import data_mesh, jit_iteration
    from cptrans_jax.steps import TrainState, adam, iteration_key, make_iteration

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = _objective(name)
    vit_cfg = vit_b16_384()
    nets = _networks()
    lr = 2e-6
    g_tx, d_tx = adam(lr), adam(lr)
    tnets = TorchNets(seed=0)
    sd = state_dicts(tnets)
    g = generator_params_from_torch(sd["G"], nets.generator)
    d = discriminator_params_from_torch(sd["D"], nets.discriminator)
    vit_params = vit_params_from_timm(sd["vit"], vit_cfg)
    del sd
    state = TrainState(jnp.zeros((), jnp.int32), g, d, g_tx.init(g), d_tx.init(d))
    t = cfg.frames_per_sample
    rng = np.random.default_rng(0)
    clips = {k: rng.uniform(-1, 1, (1, t, size, size, 3)).astype(np.float32) for k in "AB"}
    batch = {k: jnp.asarray(v) for k, v in clips.items()}
    step = jit_iteration(make_iteration(nets, cfg, g_tx, d_tx), data_mesh(1))
    base = jax.random.key(2)
    compiled, info = _compile(step, state, batch, vit_params, base)

    key = iteration_key(base, 0)
    noise = np.asarray(ctn_noise_for(key, jnp.zeros((t, size, size, 3))))
    centers = None
    if cfg.method == "roma":
        centers = np.asarray(roma_centers_for(key, vit_cfg.num_patches, cfg.roma_local_centers))

    def adam_t(params):
        return torch.optim.Adam(params, lr, betas=(0.5, 0.999), eps=1e-8)

    opt_g, opt_d = adam_t(tnets.G.parameters()), adam_t(tnets.D.parameters())

    def torch_step() -> dict:
        return torch_iteration(
            tnets.G,
            tnets.vit,
            tnets.D,
            opt_g,
            opt_d,
            clips["A"],
            clips["B"],
            cfg,
            noise=noise,
            centers=centers,
            window=vit_cfg.local_window,
            co_weights=torch_co_closed_form,
        )

    def jax_step() -> dict:
        nonlocal state
        state, metrics = compiled(state, batch, vit_params, base)
        return jax.device_get(metrics)

    # The first iteration of each from the same weights and draws: the same work, checked.
    ours, ref = jax_step(), torch_step()
    rel = max(abs(float(ours[k]) - v) / max(abs(v), 1e-12) for k, v in ref.items())
    if not rel <= LOSS_AGREEMENT:
        raise SystemExit(f"{name}: losses disagree (max relative {rel:.2e}): {ours} vs {ref}")
    times = {"ours": [], "torch": []}
    for _ in range(iters):
        for side, fn in (("ours", jax_step), ("torch", torch_step)):
            t0 = time.perf_counter()
            fn()
            times[side].append(time.perf_counter() - t0)
    sec = {k: statistics.median(v) for k, v in times.items()}
    rates = matmul_rates()
    return {
        **info,
        "name": name,
        "conv_impl": _conv_impl(),
        "backend": jax.default_backend(),
        "threads": torch.get_num_threads(),
        "sec_ours": sec["ours"],
        "sec_torch": sec["torch"],
        "loss_rel_diff": rel,
        "matmul_xla": rates["xla"],
        "matmul_torch": rates["torch"],
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


# Relative agreement of the two first iterations' loss terms required before timing: full-size
# float32 forward passes differ by summation order only (the tiny parity tests hold 1e-5).
LOSS_AGREEMENT = 1e-4


def print_against(rows: list[dict], size: int) -> None:
    r0 = rows[0]
    print(
        f"\n{size}×{size}, batch 1, {r0['threads']} threads, backend {r0['backend']}, "
        f"G convolutions {r0['conv_impl']}"
    )
    print(
        f"2048² float32 matmul in the same runs: XLA {rows[0]['matmul_xla']:.0f} GFLOP/s, "
        f"torch {rows[0]['matmul_torch']:.0f} GFLOP/s\n"
    )
    print(
        "| configuration | ours s/it | torch s/it | ours / torch | GFLOP/it (XLA) "
        "| ours GFLOP/s (% of XLA matmul) | torch GFLOP/s (% of torch matmul) | loss rel. diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ours, theirs = r["gflops"] / r["sec_ours"], r["gflops"] / r["sec_torch"]
        print(
            f"| {r['name']} | {r['sec_ours']:.2f} | {r['sec_torch']:.2f} "
            f"| {r['sec_ours'] / r['sec_torch']:.2f} | {r['gflops']:.0f} "
            f"| {ours:.0f} ({100 * ours / r['matmul_xla']:.0f} %) "
            f"| {theirs:.0f} ({100 * theirs / r['matmul_torch']:.0f} %) "
            f"| {r['loss_rel_diff']:.1e} |"
        )
    names = {r["name"]: r for r in rows}
    if {"cptrans", "roma"} <= set(names):
        ratio = names["cptrans"]["sec_ours"] / names["roma"]["sec_torch"]
        print(f"\nours CPTrans / torch ROMA: {ratio:.2f}")


def child_command(args: argparse.Namespace, name: str) -> list[str]:
    """The command line of the child process that runs configuration ``name``."""
    cmd = [sys.executable, __file__, "--child", "--only", name]
    cmd += ["--size", str(args.size), "--iters", str(args.iters), "--batch", str(args.batch)]
    cmd += ["--tiny"] if args.tiny else []
    # The child parses its own flags (and sets POLICY and CONV_IMPL from them): pass them on.
    cmd += ["--compute_dtype", args.compute_dtype, "--matmul_precision", args.matmul_precision]
    cmd += ["--conv_impl", args.conv_impl]
    return cmd + (["--against", args.against] if args.against else [])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(CONFIGS), help="run one configuration")
    parser.add_argument("--size", type=int, default=256, help="frame size (default 256)")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations (median)")
    parser.add_argument("--batch", type=int, default=1, help="clips per iteration (one device)")
    parser.add_argument("--tiny", action="store_true", help="the demo's tiny networks (smoke)")
    parser.add_argument("--json", action="store_true", help="one JSON line per row, no table")
    parser.add_argument(
        "--against", choices=["torch"], help="time the PyTorch iteration of the same math too"
    )
    parser.add_argument(
        "--conv_impl",
        choices=["auto", "lax", "im2col"],
        default="auto",
        help="G's convolutions, as train.conv_impl (auto: im2col on CPU, lax elsewhere)",
    )
    parser.add_argument(
        "--compute_dtype", choices=("float32", "bfloat16"), default="float32",
        help="the networks' compute dtype (params, optimizer states and losses stay float32)",
    )  # fmt: skip
    parser.add_argument(
        "--matmul_precision", choices=("highest", "default"), default="highest",
        help="the networks' matmul/conv precision",
    )  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.against and (args.batch != 1 or args.tiny):
        parser.error("--against torch times batch 1 of the full-size networks only")
    return args


def main() -> None:
    args = parse_args()
    os.environ["CONV_IMPL"] = args.conv_impl
    os.environ["POLICY"] = f"{args.compute_dtype}/{args.matmul_precision}"
    os.environ["TINY"] = "1" if args.tiny else "0"
    if args.child:
        if args.against:
            print(json.dumps(run_against_torch(args.only, args.size, args.iters)))
        else:
            print(json.dumps(run_one(args.only, args.size, args.iters, args.batch)))
        return
    default = ["cptrans", "roma"] if args.against else list(CONFIGS)
    names = [args.only] if args.only else default
    rows = []
    for name in names:
        out = subprocess.run(child_command(args, name), capture_output=True, text=True)
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"done: {name}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not rows:
        raise SystemExit(1)
    if args.json:
        return
    if args.against:
        print_against(rows, args.size)
        return
    r0 = rows[0]
    print(
        f"\n{args.size}×{args.size}, batch {args.batch}, backend {r0['backend']}, "
        f"networks {r0['policy']}{' (tiny)' if args.tiny else ''}, "
        f"G convolutions {r0['conv_impl']}\n"
    )
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
