"""Run as a script with 8 simulated CPU devices: one iteration on a 1-device mesh and on an
8-device mesh, same global batch of 8; prints the largest differences as JSON.

Used by ``test_sharding.py`` (a subprocess: the device count is fixed when JAX starts).

Parameters are compared in float64. In float32 the two meshes sum the gradient in a different
order (8 per-device partial sums, then an all-reduce), and with ordinary-scale random weights
some G gradients (CTN's second G pass through instance norms) cancel so heavily that either
order is ~1e-2 (relative) away from the float64 result on some leaves — so float32 parameters
cannot be held to 1e-6, while a sharding mistake (a wrong mean, a per-device CO statistic) shows
up in float64 at once.

Float32 loss terms are compared on the *first* iteration only. There both meshes start from the
same parameters and inputs, so the terms differ only by the order of float32 sums (a mean over
8 per-device partial sums against one sum): a few units of float32 rounding, ~1e-7 relative
(3.2e-7 measured). From the second iteration on the parameters differ: Adam's first update is
lr·g/|g| elementwise, so every gradient element that cancels to rounding noise (the CTN pass's,
say) can take a step of ±lr on one mesh and ∓lr on the other — a 2·lr = 2e-4 difference in that
parameter — and the loss terms then differ by up to ~1e-4 relative (1.9e-4 measured on one
machine, 6e-7 on another), which no float32 bound can hold. Float64 carries the check from there.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from cptrans_jax.convert import init_vit_params  # noqa: E402
from cptrans_jax.models import Discriminator, FeatureViT, Generator, ViTConfig  # noqa: E402
from cptrans_jax.objectives import Networks, ObjectiveConfig, cptrans_variant  # noqa: E402
from cptrans_jax.sharding import data_mesh, jit_iteration, place_replicated  # noqa: E402
from cptrans_jax.steps import TrainState, adam, make_iteration  # noqa: E402

VIT = ViTConfig(48, 8, 32, 6, 4, 64, local_window=3)
NETS = Networks(Generator(ngf=8, n_blocks=2), FeatureViT(VIT), Discriminator(32))


def initial(dtype):
    """Ordinary-scale G (the 0.02-gain init makes G output ≈ 0), default D, random ViT."""
    g = NETS.generator.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    g = jax.tree.map(lambda a: np.asarray(a, np.float64) * 40.0, g)
    d = NETS.discriminator.init(jax.random.key(1), jnp.zeros((1, 1, 32)))["params"]
    vit = init_vit_params(VIT, jax.random.key(2))
    cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(np.asarray(a), dtype), tree)  # noqa: E731
    return cast(g), cast(d), cast(vit)


def run(cfg, txs, devices, dtype):
    mesh = data_mesh(devices)
    g, d, vit = initial(dtype)
    state = TrainState(jnp.zeros((), jnp.int32), g, d, txs[0].init(g), txs[1].init(d))
    rng = np.random.default_rng(0)
    shape = (8, cfg.frames_per_sample, 32, 32, 3)
    batch = {k: jnp.asarray(rng.uniform(-1, 1, shape), dtype) for k in "AB"}
    step = jit_iteration(make_iteration(NETS, cfg, *txs), mesh)
    vit = place_replicated(vit, mesh)
    s, first = step(place_replicated(state, mesh), batch, vit, jax.random.key(3))
    first = {k: float(v) for k, v in first.items()}
    s, m = step(s, batch, vit, jax.random.key(3))  # two iterations: Adam moments matter too
    params = jax.tree.map(np.asarray, (s.g_params, s.d_params))
    return params, {k: float(v) for k, v in m.items()}, first


def main():
    assert jax.device_count() == 8, jax.devices()
    cptrans = cptrans_variant("full", ctn_gamma=8.0, ctn_sigma=2.0)
    roma = ObjectiveConfig(method="roma", use_co=False, use_ctn=False, roma_local_centers=8)
    out = {}
    for name, cfg, opt in (("cptrans_adam", cptrans, "adam"), ("roma_sgd", roma, "sgd")):
        txs = (adam(1e-4), adam(1e-4)) if opt == "adam" else (optax.sgd(1e-2), optax.sgd(1e-2))
        with jax.enable_x64(True):
            p1, m1, _ = run(cfg, txs, 1, jnp.float64)
            p8, m8, _ = run(cfg, txs, 8, jnp.float64)
        out[name] = {
            "params_f64": max(
                float(np.abs(a - b).max())
                for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8), strict=True)
            ),
            "loss_rel_f64": max(abs(m1[k] - m8[k]) / max(abs(m1[k]), 1e-30) for k in m1),
            "terms": sorted(m1),
        }
        if name == "cptrans_adam":  # the float32 losses, for the method with every term
            _, _, f1 = run(cfg, txs, 1, jnp.float32)
            _, _, f8 = run(cfg, txs, 8, jnp.float32)
            # First iteration only: see the module docstring.
            out[name]["loss_rel_f32_first"] = max(
                abs(f1[k] - f8[k]) / max(abs(f1[k]), 1e-30) for k in f1
            )
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
