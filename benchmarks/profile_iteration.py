"""Where a full-size CPTrans or ROMA iteration spends its time: component timings.

Each component of the iteration is jitted and timed on its own at the iteration's shapes
(256² frames, batch 1: one frame for CPTrans, two for ROMA; ViT-B/16-384 blocks 0–5; D 768),
then the whole iteration; the table gives seconds, the share of the sum, and XLA's FLOP count
and rate per component. The parts are what the iteration runs (``objectives.py``/``steps.py``):

    python benchmarks/profile_iteration.py --method cptrans
    python benchmarks/profile_iteration.py --method roma --conv_impl lax

Components are timed apart, so XLA cannot fuse or overlap across them as it does in the
iteration; the sum is close to, not equal to, the iteration's time (the last row). "G forward
alone" is shown for its own sake and not summed: the iteration's G forward is part of the
forward+backward row (its pull-back is kept with ``jax.vjp``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from cptrans_jax.convert import init_vit_params
from cptrans_jax.losses import content_aware, temporal
from cptrans_jax.models import Discriminator, FeatureViT, Generator, vit_b16_384
from cptrans_jax.models.discriminator import multiscale_tokens
from cptrans_jax.models.generator import conv_impl_for
from cptrans_jax.objectives import Networks, ObjectiveConfig, cptrans_variant
from cptrans_jax.sharding import data_mesh, jit_iteration
from cptrans_jax.steps import adam, init_train_state, make_iteration


def _time(fn, args, reps: int) -> tuple[float, float]:
    compiled = jax.jit(fn).lower(*args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), float(cost.get("flops", float("nan")))


def components(method: str, conv_impl: str, size: int) -> list[tuple[str, object, tuple, int]]:
    """(name, function, arguments, times it runs per iteration) for each component."""
    roma = method == "roma"
    cfg = ObjectiveConfig(method="roma", use_co=False, use_ctn=False) if roma else None
    cfg = cfg or cptrans_variant("full")
    vit_cfg = vit_b16_384()
    nets = Networks(Generator(conv_impl=conv_impl), FeatureViT(vit_cfg), Discriminator(768))
    t = cfg.frames_per_sample
    rng = np.random.default_rng(0)
    frames = jnp.asarray(rng.uniform(-1, 1, (t, size, size, 3)), jnp.float32)
    g_params = nets.generator.init(jax.random.key(0), frames)["params"]
    d_params = nets.discriminator.init(jax.random.key(1), jnp.zeros((1, 1, 768)))["params"]
    vit_params = init_vit_params(vit_cfg, jax.random.key(2))
    layers = cfg.vit_layers
    tokens = jnp.asarray(rng.standard_normal((t, vit_cfg.num_patches, 768)), jnp.float32)
    d_in = multiscale_tokens(tokens, cfg.roma_scales) if roma else tokens

    def g_fwd(p, x):
        return nets.translate(p, x)

    def g_fwd_bwd(p, x):
        y, pull = jax.vjp(lambda p: nets.translate(p, x), p)
        return pull(y)

    def vit_fwd(v, x):
        return nets.tokens(v, x, layers)

    def vit_fwd_bwd(v, x):  # the fakes' tokens: gradient to the input only (frozen ViT)
        out, pull = jax.vjp(lambda x: nets.tokens(v, x, layers), x)
        return pull(out)

    def d_fwd_bwd(p, tok):
        return jax.grad(lambda p: jnp.mean(nets.discriminate(p, tok) ** 2))(p)

    def adam_update(g, d):
        tx = adam(2e-4)
        out = []
        for p in (g, d):
            upd, _ = tx.update(p, tx.init(p), p)
            out.append(jax.tree.map(jnp.add, p, upd))
        return out

    rows = [
        ("G forward alone (part of the next row)", g_fwd, (g_params, frames), 0),
        ("G forward + backward (the fakes)", g_fwd_bwd, (g_params, frames), 1),
        ("ViT forward, no grad (source and target)", vit_fwd, (vit_params, frames), 2),
        ("ViT forward + input gradient (fakes)", vit_fwd_bwd, (vit_params, frames), 1),
        ("D forward + backward (real, fake; D and G steps)", d_fwd_bwd, (d_params, d_in), 3),
        ("Adam updates of G and D", adam_update, (g_params, d_params), 1),
    ]
    if roma:
        centers = jnp.arange(cfg.roma_local_centers) * 9 % vit_cfg.num_patches

        def local_fwd(v, x):
            return nets.local_tokens(v, x, centers, layers)

        def local_fwd_bwd(v, x):
            out, pull = jax.vjp(lambda x: nets.local_tokens(v, x, centers, layers), x)
            return pull(out)

        rows += [
            ("ViT 64 local 7×7 windows, forward (source)", local_fwd, (vit_params, frames), 1),
            (
                "ViT 64 local windows + input gradient (fakes)",
                local_fwd_bwd,
                (vit_params, frames),
                1,
            ),
        ]
    else:

        def co(p, tok):
            return [content_aware.co_deltas_fast(p, tok, target) for target in (1.0, 0.0)]

        fake = jnp.tanh(frames)  # any fixed frames: the fakes are G's first pass, timed above

        def ctn(p, x, fake):  # the flow, both warps, the second G pass and its backward
            noise = temporal.ctn_noise(jax.random.key(3), t, size, size)
            flow = temporal.ctn_flow(jnp.ones((t, 24, 24)), noise, cfg.ctn_gamma, cfg.ctn_sigma)

            def loss(p):
                second = nets.translate(p, temporal.warp(x, flow))
                return jnp.mean((temporal.warp(fake, flow) - second) ** 2)

            return jax.grad(loss)(p)

        rows += [
            ("CO δ, closed form (real and fake)", co, (d_params, tokens), 1),
            ("CTN: warp, second G pass + backward", ctn, (g_params, frames, fake), 1),
        ]
    return rows, nets, cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["cptrans", "roma"], default="cptrans")
    parser.add_argument("--conv_impl", choices=["auto", "lax", "im2col"], default="auto")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    conv_impl = conv_impl_for(args.conv_impl, jax.devices()[0].platform)
    rows, nets, cfg = components(args.method, conv_impl, args.size)
    results = []
    for name, fn, fn_args, count in rows:
        sec, flops = _time(fn, fn_args, args.reps)
        # count 0: shown for its own sake, part of another row (not added to the sum)
        results.append((name, count, sec * max(count, 1), flops * max(count, 1)))
        print(f"done: {name}", flush=True)
    total = sum(r[2] for r in results if r[1])

    g_tx, d_tx = adam(2e-6), adam(2e-6)
    state = init_train_state(nets, g_tx, d_tx, jax.random.key(0), (args.size, args.size))
    vit_params = init_vit_params(nets.vit.config, jax.random.key(1))
    t = cfg.frames_per_sample
    batch = {k: jnp.zeros((1, t, args.size, args.size, 3)) for k in "AB"}
    step = jit_iteration(make_iteration(nets, cfg, g_tx, d_tx), data_mesh(1))
    compiled = step.lower(state, batch, vit_params, jax.random.key(2)).compile()
    cost = compiled.cost_analysis()
    it_flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, vit_params, jax.random.key(2))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    it_sec = statistics.median(times)

    print(f"\n{args.method}, {args.size}², batch 1, G convolutions {conv_impl}\n")
    print("| component | × per iteration | s | share of sum | GFLOP | GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for name, count, sec, flops in results:
        print(
            f"| {name} | {count or '–'} | {sec:.2f} | "
            f"{f'{100 * sec / total:.0f} %' if count else '–'} | {flops / 1e9:.0f} "
            f"| {flops / 1e9 / sec:.0f} |"
        )
    print(f"| sum of the components | | {total:.2f} | 100 % | | |")
    print(
        f"| **the jitted iteration** | 1 | {it_sec:.2f} | | {it_flops / 1e9:.0f} "
        f"| {it_flops / 1e9 / it_sec:.0f} |"
    )


if __name__ == "__main__":
    main()
