"""GFLOP/s of G's convolutions: XLA's native op, our im2col matmul, and PyTorch, per shape.

For each convolution shape of the paper's G at 256² (input already padded, batch 1) it times
the forward and the backward (input and kernel gradients from a random cotangent, as in
training) of ``lax.conv_general_dilated``, of ``models.layers.im2col_conv`` and of PyTorch's
``conv2d`` (oneDNN on CPU), plus a 2048² float32 matmul in each framework, in one process:

    python benchmarks/conv_rates.py

GFLOP/s counts 2·H·W·k²·C_in·C_out per forward and twice that per backward.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from cptrans_jax.models.layers import im2col_conv

# (padded side, C_in, C_out, k) of G's convolutions at 256² (model_1, _4, _8, the 18 residual
# convs, the two up-convs, the output conv), with how many of each G runs.
SHAPES = [
    (262, 3, 64, 7, 1),
    (258, 64, 128, 3, 1),
    (130, 128, 256, 3, 1),
    (66, 256, 256, 3, 18),
    (130, 256, 128, 3, 1),
    (258, 128, 64, 3, 1),
    (262, 64, 3, 7, 1),
]
DN = ("NHWC", "HWIO", "NHWC")


def _median(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _xla_rates(conv, x, w, ct, flops: float, reps: int) -> str:
    def f(x, w):
        return conv(x, w, (1, 1), ((0, 0), (0, 0)), dimension_numbers=DN)

    fwd = jax.jit(f)
    bwd = jax.jit(lambda x, w, ct: jax.vjp(f, x, w)[1](ct))
    t_f = _median(lambda: fwd(x, w).block_until_ready(), reps)
    t_b = _median(lambda: jax.block_until_ready(bwd(x, w, ct)), reps)
    return f"{flops / t_f / 1e9:.0f} / {2 * flops / t_b / 1e9:.0f}"


def _torch_rates(x, w, ct, flops: float, reps: int) -> str:
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_()
    wt = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy()).requires_grad_()
    ctt = torch.from_numpy(np.asarray(ct).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        t_f = _median(lambda: torch.nn.functional.conv2d(xt, wt), reps)
    t_fb = _median(
        lambda: torch.autograd.grad(torch.nn.functional.conv2d(xt, wt), (xt, wt), ctt), reps
    )
    return f"{flops / t_f / 1e9:.0f} / {2 * flops / max(t_fb - t_f, 1e-9) / 1e9:.0f}"


def _row(side: int, c_in: int, c_out: int, k: int, count: int, *, rng, reps: int) -> str:
    out = side - k + 1
    x = jnp.asarray(rng.standard_normal((1, side, side, c_in)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, c_in, c_out)) * 0.05, jnp.float32)
    ct = jnp.asarray(rng.standard_normal((1, out, out, c_out)), jnp.float32)
    flops = 2 * out * out * k * k * c_in * c_out
    cells = [
        _xla_rates(jax.lax.conv_general_dilated, x, w, ct, flops, reps),
        _xla_rates(im2col_conv, x, w, ct, flops, reps),
        _torch_rates(x, w, ct, flops, reps),
    ]
    return f"| {out}², {c_in}→{c_out}, {k}×{k} | {count} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    m = jnp.asarray(rng.standard_normal((2048, 2048)), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    mt = torch.from_numpy(np.asarray(m))
    mm_xla = 2 * 2048**3 / _median(lambda: mm(m).block_until_ready(), args.reps) / 1e9
    mm_torch = 2 * 2048**3 / _median(lambda: mt @ mt, args.reps) / 1e9
    print(f"\n2048² float32 matmul: XLA {mm_xla:.0f} GFLOP/s, torch {mm_torch:.0f} GFLOP/s\n")
    print(
        "| conv (output side, C_in→C_out, k) | × in G | XLA native fwd / bwd | im2col fwd / bwd "
        "| torch fwd / bwd |"
    )
    print("|---|---|---|---|---|")
    for shape in SHAPES:
        print(_row(*shape, rng=rng, reps=args.reps))


if __name__ == "__main__":
    main()
