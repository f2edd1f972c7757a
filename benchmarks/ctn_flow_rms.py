"""RMS displacement of the CTN flow for a few (γ, σ) at 256×256 (SPEC §8).

Prints the table quoted in ``cptrans_jax/losses/temporal.py`` next to DEFAULT_CTN_GAMMA and
DEFAULT_CTN_SIGMA. Two weight maps on the 24×24 patch grid:

* uniform: all ones (the "w/o CO" ablation) → normalized to ones, uniform magnitude;
* CO: typical content-aware weights — round(0.4·576) random patches (the content-rich set U)
  with w uniform in [λ_inc/e, λ_inc] (w = λ_inc/e^|δ|, |δ| ≤ 1), λ_inc = 2, and w = 1 elsewhere.

Run: ``python benchmarks/ctn_flow_rms.py [--draws 8] [--size 256]``
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

from cptrans_jax.losses.temporal import (
    DEFAULT_CTN_GAMMA,
    DEFAULT_CTN_SIGMA,
    ctn_flow,
    flow_rms,
)

GRID = 24
ETA = 0.4
LAMBDA_INC = 2.0


def co_weights(rng: np.random.Generator, batch: int) -> np.ndarray:
    """Random CO-like weight maps (batch, 24, 24)."""
    n = GRID * GRID
    k = round(ETA * n)
    w = np.ones((batch, n), np.float32)
    for b in range(batch):
        idx = rng.choice(n, k, replace=False)
        w[b, idx] = rng.uniform(LAMBDA_INC / math.e, LAMBDA_INC, k)
    return w.reshape(batch, GRID, GRID)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=8, help="noise draws (batch) per row")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels")
    args = parser.parse_args()

    settings = [
        (19.0, 4.0),
        (DEFAULT_CTN_GAMMA, DEFAULT_CTN_SIGMA),
        (76.0, 16.0),
        (40.0, 8.0),
        (20.0, 8.0),
        (57.0, 8.0),
        (76.0, 8.0),
    ]
    rng = np.random.default_rng(0)
    uniform = jnp.ones((args.draws, GRID, GRID), jnp.float32)
    co = jnp.asarray(co_weights(rng, args.draws))
    noise = jax.random.normal(jax.random.key(0), (args.draws, args.size, args.size, 2), jnp.float32)
    print(f"CTN flow RMS displacement (pixels), {args.size}x{args.size}, {args.draws} draws")
    print(f"{'gamma':>7} {'sigma':>6} {'uniform':>9} {'CO weights':>11}  theory γ/(√(2π)σ)")
    for gamma, sigma in settings:
        fn = jax.jit(lambda w, z, g=gamma, s=sigma: flow_rms(ctn_flow(w, z, g, s)))
        r_uni = float(fn(uniform, noise))
        r_co = float(fn(co, noise))
        theory = gamma / (math.sqrt(2 * math.pi) * sigma)
        print(f"{gamma:7.1f} {sigma:6.1f} {r_uni:9.2f} {r_co:11.2f}  {theory:8.2f}")


if __name__ == "__main__":
    main()
