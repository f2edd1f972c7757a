"""The precision policy (issue 11): bfloat16 compute against float32, and the config fields.

Tiny networks (G ngf 8 / 1 block, a 2-block 32-wide ViT on 48×48 frames — 6×6 patches, no
resize — and D 32) share one set of float32 parameters between the two policies; only the
modules' ``dtype`` differs. The parameters are ordinary-scale random numbers drawn with NumPy on
the abstract parameter tree (fan-in normal kernels, as tests/torch_reference.randomize_), so
G's output is O(1) rather than the SPEC init's ≈ 0 and no init program is compiled.

Compiles are the cost, so there are two programs, one per policy: the CPTrans iteration (CO and
CTN) reduced to its metrics — XLA then drops G's backward pass and the Adam updates, which the
losses do not need — together with CO's selection on structured frames. The dtypes of a full
iteration's new state are checked on its abstract evaluation (``jax.eval_shape``: dtypes are
static in JAX), which compiles nothing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cptrans_jax import config as config_lib
from cptrans_jax.losses import content_aware
from cptrans_jax.models import Discriminator, FeatureViT, Generator, ViTConfig
from cptrans_jax.objectives import Networks, cptrans_variant
from cptrans_jax.precision import compute_dtype, matmul_precision
from cptrans_jax.steps import TrainState, adam, init_train_state, make_iteration

# Two CPTrans programs and a full iteration's abstract evaluation: ~50 s cold on 2 idle cores,
# so the file runs in CI's `-m slow` step rather than in the default suite (its 8-minute budget).
pytestmark = pytest.mark.slow

VIT = ViTConfig(image_size=48, patch_size=8, width=32, depth=2, num_heads=4, mlp_dim=64)
SIZE, BATCH, GRID = 48, 2, 6
CFG = cptrans_variant("full", vit_layers=(0, 1), ctn_gamma=12.0, ctn_sigma=3.0)
ETA_K = content_aware.num_selected(GRID * GRID, CFG.eta)  # |U| = round(0.4 · 36) = 14

# Relative bounds on |metric_bf16 − metric_f32| / |metric_f32| for one iteration from the same
# params, inputs and key: ~4× the worst error measured (test_bf16_iteration_losses_are_close).
REL_BOUNDS = {"loss/g_ctn": 4e-2, "ctn/flow_rms_px": 5e-2, "loss/": 2e-2, "co/": 3e-3}


def nets(dtype) -> Networks:
    return Networks(
        Generator(ngf=8, n_blocks=1, dtype=dtype),
        FeatureViT(VIT, dtype=dtype),
        Discriminator(VIT.width, dtype=dtype),
    )


TX = adam(1e-4), adam(1e-4)


def random_like(tree, seed: int):
    """Ordinary-scale random values for an abstract float32 parameter tree."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf) -> np.ndarray:
        name = jax.tree_util.keystr(path)
        normal = rng.standard_normal(leaf.shape)
        if name.endswith("['kernel']"):  # fan-in normal
            qkv = any(f"['{k}']" in name for k in ("query", "key", "value"))
            fan_in = leaf.shape[0] if qkv else int(np.prod(leaf.shape[:-1]))
            return (normal / np.sqrt(fan_in)).astype(np.float32)
        if name.endswith("['scale']"):  # LayerNorm scales
            return (1.0 + 0.1 * normal).astype(np.float32)
        return (0.1 * normal).astype(np.float32)  # biases, position embedding, CLS

    return jax.tree_util.tree_map_with_path(draw, tree)


def abstract_state(n: Networks):
    return jax.eval_shape(lambda k: init_train_state(n, *TX, k, (SIZE, SIZE)), jax.random.key(0))


@pytest.fixture(scope="module")
def params():
    """Float32 train state (fresh Adam moments) and ViT params shared by both policies."""
    n = nets(jnp.float32)
    shapes = abstract_state(n)
    g, d = random_like(shapes.g_params, 0), random_like(shapes.d_params, 1)
    frames = jnp.zeros((1, SIZE, SIZE, 3))
    shapes = jax.eval_shape(lambda k: n.vit.init(k, frames, (1,)), jax.random.key(0))
    vit = random_like(shapes["params"], 2)
    state = TrainState(jnp.zeros((), jnp.int32), g, d, TX[0].init(g), TX[1].init(d))
    return state, vit


def random_batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(-1, 1, (BATCH, 1, SIZE, SIZE, 3)).astype(np.float32) for k in "AB"}


def structured_frames(seed: int) -> np.ndarray:
    """Frames whose 6×6 patch grid has ``ETA_K`` patches of random texture on a flat field:
    D's per-patch gradients of the textured patches disagree with the mean gradient, the flat
    ones' agree, so the content-rich set is clearly separated from the rest."""
    rng = np.random.default_rng(seed)
    p = SIZE // GRID
    x = np.full((BATCH, SIZE, SIZE, 3), -0.5, np.float32)
    for b in range(BATCH):
        for i in rng.choice(GRID * GRID, ETA_K, replace=False):
            r, c = divmod(int(i), GRID)
            x[b, r * p : (r + 1) * p, c * p : (c + 1) * p] = rng.uniform(-1, 1, (p, p, 3))
    return x


def co_selection(n: Networks, g_params, d_params, vit_params, a, b) -> dict:
    """CO's δ and selected set U of the real term (tokens of b) and the fake term (of G(a))."""
    fake = n.translate(g_params, a)
    out = {}
    for term, frames, target in (("real", b, 1.0), ("fake", fake, 0.0)):
        tokens = n.tokens(vit_params, frames, CFG.vit_layers[-1:])[0]
        _, selected, delta = content_aware.co_weights_for(d_params, tokens, target, eta=CFG.eta)
        out[term] = (selected, delta)
    return out


SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def probes(params):
    """Per policy: an iteration's metrics for each input seed (same state, inputs and key),
    and CO's selection on structured frames — one compiled program per policy."""
    state, vit_params = params
    a, b = structured_frames(0), structured_frames(1)
    out = {}
    for name in ("float32", "bfloat16"):
        n = nets(compute_dtype(name))
        iteration = make_iteration(n, CFG, *TX)

        def probe(batch, key, n=n, iteration=iteration):
            metrics = iteration(state, batch, vit_params, key)[1]
            return metrics, co_selection(n, state.g_params, state.d_params, vit_params, a, b)

        probe = jax.jit(probe)
        out[name] = [probe(random_batch(s), jax.random.key(s)) for s in SEEDS]
    return out


def test_bf16_iteration_losses_are_close(probes):
    """Every loss term and CO statistic of a bfloat16 iteration is within a relative bound of
    float32's on the same params, inputs and random draws.

    Measured on CPU (jax 0.10.2, x86-64), worst of the 3 seeds: loss/g_ctn 8.3e-3 (a squared
    difference of two G outputs: G's rounding enters twice, and the flow through w̃),
    ctn/flow_rms_px 8.0e-3 (a constant of the step, but min–max of w̃ makes it jump when a
    boundary patch of U changes sides: 2.9e-2 on another tiny set-up), loss/g_cs 4.4e-3,
    loss/d_fake 4.1e-3, the other losses ≤ 2.3e-3, the CO means ≤ 6.7e-4 (δ itself is
    float32; only the tokens it is computed from carry bfloat16 rounding). Bounds
    (``REL_BOUNDS``): 4e-2 CTN loss, 5e-2 flow RMS, 2e-2 other losses, 3e-3 CO statistics.
    """
    worst = {}
    for (m32, _), (m16, _) in zip(probes["float32"], probes["bfloat16"], strict=True):
        assert m32.keys() == m16.keys()
        for k in m32:
            a, b = float(m32[k]), float(m16[k])
            assert np.isfinite(b), k
            worst[k] = max(worst.get(k, 0.0), abs(b - a) / abs(a))
    print("relative bf16 - f32 errors:", {k: f"{v:.1e}" for k, v in sorted(worst.items())})
    for k, err in worst.items():
        bound = next(v for prefix, v in REL_BOUNDS.items() if k.startswith(prefix))
        assert err <= bound, (k, err, bound)
    # The terms that matter are exercised (not ≈ 0), so a relative bound means something.
    m32, _ = probes["float32"][0]
    for k in ("loss/d", "loss/g_adv", "loss/g_cs", "loss/g_ctn"):
        assert abs(float(m32[k])) > 1e-3, k


def test_bf16_iteration_keeps_float32_state(params):
    """Parameters and Adam's moments stay float32 under bfloat16 compute, with the same tree
    (the abstract evaluation of a full bfloat16 iteration)."""
    state, vit_params = params
    iteration = make_iteration(nets(jnp.bfloat16), CFG, *TX)
    new, metrics = jax.eval_shape(iteration, state, random_batch(0), vit_params, jax.random.key(0))
    assert all(m.dtype == jnp.float32 for m in metrics.values())
    assert jax.tree.structure(new) == jax.tree.structure(state)
    for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new), strict=True):
        assert after.dtype == before.dtype and after.shape == before.shape
    floats = jax.tree.leaves((new.g_params, new.d_params, new.g_opt_state, new.d_opt_state))
    assert {str(x.dtype) for x in floats if jnp.issubdtype(x.dtype, jnp.floating)} == {"float32"}


def test_policy_leaves_the_parameter_tree_alone():
    """Checkpoints and converters see the same params under any policy: the same names and
    shapes, float32; and every network's outputs are float32 (abstract evaluation)."""
    frames = jnp.zeros((1, SIZE, SIZE, 3))
    g16 = Generator(ngf=8, n_blocks=1, dtype=jnp.bfloat16)
    for default, bf16, args in (
        (Generator(ngf=8, n_blocks=1), g16, (frames,)),
        (FeatureViT(VIT), FeatureViT(VIT, dtype=jnp.bfloat16), (frames, (0, 1))),
        (Discriminator(32), Discriminator(32, dtype=jnp.bfloat16), (jnp.zeros((1, 1, 32)),)),
    ):
        a = jax.eval_shape(lambda k, m=default, args=args: m.init(k, *args), jax.random.key(0))
        b = jax.eval_shape(lambda k, m=bf16, args=args: m.init(k, *args), jax.random.key(0))
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            assert p.shape == q.shape and p.dtype == q.dtype == jnp.float32
        out = jax.eval_shape(lambda v, m=bf16, args=args: m.apply(v, *args), b)
        assert all(o.dtype == jnp.float32 for o in jax.tree.leaves(out))


def test_co_selected_set_agrees(probes):
    """The content-rich set U is the same under bfloat16 as under float32 where the margin is
    clear, and differs at most on patches next to the boundary where it is not.

    Real term, structured frames: the f32 gap between the |U|-th and (|U|+1)-th smallest δ is
    0.16 while bfloat16 moves δ by ≤ 3.5e-3 (measured): the test asserts the gap exceeds 10×
    the actual max|Δδ| and that U is identical. (On unstructured frames the gap is often
    below max|Δδ| and U can differ by a boundary patch — hence the structured case.)

    Fake term (G of structured frames; the random G blurs the structure, so there is no clear
    margin: measured max|Δδ| 7.1e-3, f32 gap 4.4e-3): max|Δδ| ≤ 3e-2, and a patch changes sides
    only if its f32 δ lies within 2·max|Δδ| of the f32 boundary (the midpoint of the |U|-th and
    (|U|+1)-th smallest δ; each order statistic moves by at most max|Δδ|).
    """
    res = {name: runs[0][1] for name, runs in probes.items()}
    for term in ("real", "fake"):
        sel32, d32 = map(np.asarray, res["float32"][term])
        sel16, d16 = map(np.asarray, res["bfloat16"][term])
        assert d16.dtype == np.float32
        err = float(np.abs(d16 - d32).max())
        srt = np.sort(d32, axis=1)
        boundary = 0.5 * (srt[:, ETA_K - 1] + srt[:, ETA_K])  # (B,)
        gap = srt[:, ETA_K] - srt[:, ETA_K - 1]
        print(f"{term}: max|Δδ| = {err:.1e}, f32 gap at |U| = {gap.min():.1e}")
        assert (sel32.sum(1) == ETA_K).all() and (sel16.sum(1) == ETA_K).all()
        if term == "real":
            assert gap.min() > 10 * err  # a case with a clear margin …
            np.testing.assert_array_equal(sel16, sel32)  # … where U must agree exactly
        else:
            assert err <= 3e-2
            changed = sel16 != sel32
            near = np.abs(d32 - boundary[:, None]) <= 2 * err + 1e-6
            assert not (changed & ~near).any()


def test_config_fields_validate_and_build():
    c = config_lib.base_config()
    assert (c.train.compute_dtype, c.train.matmul_precision) == ("float32", "highest")
    config_lib.validate(c)
    nets_default = config_lib.build_networks(c)
    for m in (nets_default.generator, nets_default.vit, nets_default.discriminator):
        # float32 = no cast (None): float32 training, float64 in the float64 parity tests
        assert m.dtype is None and m.precision == jax.lax.Precision.HIGHEST
    c.train.compute_dtype, c.train.matmul_precision = "bfloat16", "default"
    config_lib.validate(c)
    built = config_lib.build_networks(c)
    for m in (built.generator, built.vit, built.discriminator):
        assert m.dtype == jnp.bfloat16 and m.precision == jax.lax.Precision.DEFAULT
    for field, bad in (("compute_dtype", "float16"), ("matmul_precision", "high")):
        c = config_lib.base_config()
        c.train[field] = bad
        with pytest.raises(ValueError, match=rf"^config field train\.{field}: must be one of"):
            config_lib.validate(c)
    with pytest.raises(ValueError, match="compute dtype"):
        compute_dtype("fp32")
    with pytest.raises(ValueError, match="matmul precision"):
        matmul_precision("HIGHEST")
