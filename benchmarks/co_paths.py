"""Time and memory of the two CO δ paths at the paper size (SPEC §4, "Content-aware
optimization").

N = 576 tokens, C = 768, D = 1,181,184 parameters, batch 1. For the per-patch autodiff path
(``co_deltas_vmap``) at a few chunk sizes and for the closed-form path (``co_deltas_fast``) it
prints seconds per call (after compilation, median of ``--repeats`` calls) and the compiled
program's temporary buffer size (``memory_analysis().temp_size_in_bytes``), which is what the
chunking bounds. Also prints max|δ_vmap − δ_fast|.

    python benchmarks/co_paths.py [--chunks 16 64 192] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from cptrans_jax.losses.content_aware import co_deltas_fast, co_deltas_vmap
from cptrans_jax.models import Discriminator

N, C = 576, 768


def d_apply(params: dict, tokens: jax.Array) -> jax.Array:
    return Discriminator(width=C).apply({"params": params}, tokens)


def measure(fn, args: tuple, repeats: int) -> tuple[float, int | None, np.ndarray]:
    """(median seconds per call, temp bytes of the compiled program, result)."""
    compiled = jax.jit(fn).lower(*args).compile()
    analysis = compiled.memory_analysis()
    temp = None if analysis is None else int(analysis.temp_size_in_bytes)
    out = jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), temp, np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 64, 192])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    params = Discriminator(width=C).init(jax.random.key(0), jnp.zeros((1, 1, C)))["params"]
    assert sum(x.size for x in jax.tree.leaves(params)) == 1_181_184
    tokens = jax.random.normal(jax.random.key(1), (1, N, C))
    target = jnp.float32(1.0)

    rows = []
    t, mem, ref = measure(co_deltas_fast, (params, tokens, target), args.repeats)
    rows.append(("fast (closed form)", t, mem, 0.0))
    for chunk in args.chunks:

        def vmap_path(p, x, y, chunk=chunk):
            return co_deltas_vmap(d_apply, p, x, y, chunk)

        t, mem, out = measure(vmap_path, (params, tokens, target), args.repeats)
        rows.append((f"vmap, chunk {chunk}", t, mem, float(np.abs(out - ref).max())))

    print(f"CO δ at N={N}, C={C}, |θ_D|=1,181,184, batch 1 — {jax.devices()[0].device_kind}")
    print(f"{'path':<20} {'s/call':>10} {'temp MiB':>10} {'max|Δδ| vs fast':>16}")
    for name, t, mem, err in rows:
        mib = "n/a" if mem is None else f"{mem / 2**20:.1f}"
        print(f"{name:<20} {t:>10.4f} {mib:>10} {err:>16.1e}")


if __name__ == "__main__":
    main()
