"""The demo's stand-in for the pretrained ViT: a tiny ViT taught what road and objects are.

Why: the method's structural loss L_cs compares the token-to-token similarities of x and G(x)
in a *pretrained* ViT, whose tokens say what a region is whatever the domain. A randomly
initialised ViT has no such tokens: on the demo data its L_cs scores the day rendering of the
infrared's own layout *worse* than a constant mean day frame and no better than another scene's
layout, so it pulls G towards input-independent output (README, "the demo"; measured by
``python -m cptrans_jax.demo_vit --check``). The real runs load ViT-B/16-384 weights; the demo,
which may not download anything, uses the weights this module makes.

How: the demo ViT (``configs/demo.py``) is trained for a few hundred Adam steps, with a linear
head on the normed tokens of the loss layers (1, 3, 5), to say for each 2×2-px cell of its
patch (``CELLS`` = 4 cells a side of the 8-px patch) which fraction of it is sky, verge, road or
object, and its mean colour — on the demo's *training* scenes of both domains, each with its
own layout's labels (the infrared's from its layout, the visible's from theirs). The cells are
why: a token that must say where in its patch a boundary lies changes when the boundary moves
within the patch, so the structural loss and the discriminator (which reads the last layer's
tokens) see structure finer than a patch. The colour is for the discriminator: tokens trained
on classes alone say little about colour, and with them G painted the sky near the horizon
pale pink in one seed of three. (``--cells 1 --colour_weight 0``, the fraction of the whole
patch, was the first demo ViT's target; README, "the demo", compares them.) No pair of
scenes is ever shown together, and none of the held-out scenes the layout score uses. Like an
ImageNet-pretrained ViT, it knows the classes, not the translation.

``python -m cptrans_jax.demo_vit --out configs/demo_vit.npz`` writes the weights as an augreg
``.npz`` (the Flax paths joined by ``/``), which ``model.vit_weights`` loads;
``--check PATH`` prints the L_cs of held-out scenes' truth and of three input-independent or
wrong outputs under a weights file (or a random ViT without one).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cptrans_jax.data.demo_scenes import infrared_clips
from cptrans_jax.data.demo_truth import paired_truth, visible_labels
from cptrans_jax.models import FeatureViT, ViTConfig

Params = Any

# demo_truth.LABELS → the classes the infrared shows: sky, verge, road (with its lane marks, which
# the infrared does not show), object.
COARSE = np.array([0, 1, 2, 2, 3], np.int64)
CLASSES = int(COARSE.max()) + 1
LAYERS = (1, 3, 5)
CELLS = 4
COLOUR_WEIGHT = 1.0


def demo_vit_config(patch_size: int = 8) -> ViTConfig:
    """The demo's ViT (``configs/demo.py``): 6 blocks of width 64 on an 8×8 grid of 8-px
    patches of the 64-px frames (no resize); ``patch_size`` another patch (and grid) for
    experiments, trained with ``--config.model.vit.patch_size`` set to the same value."""
    if patch_size < 1 or 64 % patch_size:
        raise ValueError(f"patch_size must divide the 64-px frame, got {patch_size}")
    return ViTConfig(
        image_size=64,
        patch_size=patch_size,
        width=64,
        depth=6,
        num_heads=4,
        mlp_dim=128,
        local_window=3,
    )


def _cell_means(x: np.ndarray, config: ViTConfig, cells: int) -> np.ndarray:
    """(n, grid², cells², C) means of (n, S, S, C) ``x`` (S the ViT's input size) over each of
    the cells × cells squares of each ViT patch, patches and cells in row-major order."""
    n, p, g = x.shape[0], config.patch_size, config.grid
    if x.shape[1:3] != (config.image_size, config.image_size):
        raise ValueError(f"need {config.image_size}-px frames, got shape {x.shape}")
    if cells < 1 or p % cells:
        raise ValueError(f"cells must divide the patch size {p}, got {cells}")
    q, c = p // cells, x.shape[-1]
    # (n, patch row, cell row, pixel, patch col, cell col, pixel, channel)
    mean = x.reshape(n, g, cells, q, g, cells, q, c).mean(axis=(3, 6))
    return mean.transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, cells * cells, c)


def token_targets(labels: np.ndarray, config: ViTConfig, cells: int = CELLS) -> np.ndarray:
    """(n, grid², cells², 4) fraction of each of the cells × cells squares of each ViT patch
    covered by sky, verge, road and object (``cells=1``: of the whole patch).

    ``labels`` (n, S, S) are ``demo_truth.LABELS``; when S is not the ViT's input size they are
    brought to it by nearest-neighbour resampling (the frames by bilinear, which moves no
    boundary by more than half an input pixel). ``cells`` must divide the patch size.
    """
    s, size = labels.shape[1], config.image_size
    pick = np.minimum(((np.arange(size) + 0.5) * s / size).astype(np.int64), s - 1)
    onehot = np.eye(CLASSES, dtype=np.float32)[COARSE[labels[:, pick][:, :, pick]]]
    return _cell_means(onehot, config, cells)


def cell_colours(frames: np.ndarray, config: ViTConfig, cells: int = CELLS) -> np.ndarray:
    """(n, grid², cells², 3) mean colour of each cell of each ViT patch of (n, S, S, 3) frames
    at the ViT's input size S."""
    return _cell_means(np.asarray(frames, np.float32), config, cells)


def training_set(
    config: ViTConfig, seed: int, frame_size: int, scenes: int, cells: int = CELLS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames (2·scenes, S, S, 3) — infrared then visible training examples 0..scenes−1 of data
    set ``seed`` — their cell class targets (2·scenes, grid², cells², 4) and cell colours
    (2·scenes, grid², cells², 3)."""
    idx = np.arange(scenes)
    infrared = infrared_clips(seed, idx, frame_size, 1)[:, 0]
    _, ir_labels = paired_truth(seed, idx, frame_size, 1)  # the infrared's own layout
    visible, vis_labels = visible_labels(seed, idx, frame_size, 1)
    frames = np.concatenate([infrared, visible[:, 0]])
    labels = np.concatenate([ir_labels[:, 0], vis_labels[:, 0]])
    return frames, token_targets(labels, config, cells), cell_colours(frames, config, cells)


def pretrain(
    config: ViTConfig | None = None,
    *,
    seed: int = 0,
    frame_size: int = 64,
    scenes: int = 512,
    steps: int = 400,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    cells: int = CELLS,
    colour_weight: float = COLOUR_WEIGHT,
) -> Params:
    """The demo ViT's params after ``steps`` Adam steps of cell classification and colour
    (module docstring); deterministic in its arguments."""
    config = config or demo_vit_config()
    if max(LAYERS) >= config.depth:
        raise ValueError(f"the demo ViT needs depth > {max(LAYERS)}, got {config.depth}")
    vit = FeatureViT(config)
    frames, targets, colours = training_set(config, seed, frame_size, scenes, cells)
    init = vit.init(jax.random.key(seed), jnp.asarray(frames[:1]), (config.depth - 1,))
    k = cells * cells
    head = {
        "w": jnp.zeros((config.width, k * CLASSES)),
        "b": jnp.zeros(k * CLASSES),
        "wc": jnp.zeros((config.width, k * 3)),
        "bc": jnp.zeros(k * 3),
    }
    params = {"vit": init["params"], "head": head}
    opt = optax.adam(learning_rate)

    def loss_fn(p: Params, x: jax.Array, y: jax.Array, rgb: jax.Array) -> jax.Array:
        tokens = vit.apply({"params": p["vit"]}, x, LAYERS)

        # One head for all three layers: each must say what each cell of its patch is, and
        # (colour_weight) its mean colour.
        def logits(t: jax.Array) -> jax.Array:  # (B, grid², cells², classes)
            return (t @ p["head"]["w"] + p["head"]["b"]).reshape(y.shape)

        def colour(t: jax.Array) -> jax.Array:  # (B, grid², cells², 3)
            return (t @ p["head"]["wc"] + p["head"]["bc"]).reshape(rgb.shape)

        ce = [-jnp.sum(y * jax.nn.log_softmax(logits(t)), -1) for t in tokens]
        se = [jnp.sum(jnp.square(colour(t) - rgb), -1) for t in tokens]
        return jnp.mean(jnp.stack(ce)) + colour_weight * jnp.mean(jnp.stack(se))

    @jax.jit
    def step(
        p: Params, state: Any, x: jax.Array, y: jax.Array, rgb: jax.Array
    ) -> tuple[Params, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y, rgb)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    state = opt.init(params)
    order = np.random.default_rng([seed, 3]).permutation
    rows = np.concatenate(
        [order(len(frames)) for _ in range(steps * batch_size // len(frames) + 1)]
    )
    for s in range(steps):
        b = rows[s * batch_size : (s + 1) * batch_size]
        params, state, _ = step(params, state, frames[b], targets[b], colours[b])
    return jax.device_get(params["vit"])


def save_npz(params: Params, path: str) -> None:
    """Writes ViT params as an augreg-style ``.npz`` (keys: Flax paths joined by ``/``)."""
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in keys): np.asarray(v, np.float32)
        for keys, v in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    np.savez(path, **flat)


def cs_check(params: Params, config: ViTConfig, seed: int = 0, scenes: int = 16) -> dict:
    """L_cs (mean over the loss layers) between held-out infrared scenes and: their paired
    truth, the mean day frame, another scene's truth, their truth shifted down 8 rows, their truth
    blurred (what an undecided G paints: the layout in place, its edges soft)."""
    from cptrans_jax import demo_quality as dq
    from cptrans_jax.losses.similarity import global_cs_loss

    infrared, truth, _ = dq.held_out_scenes(seed, scenes, 64)
    outputs = {
        "truth": truth,
        "mean day frame": np.broadcast_to(dq.mean_day_frame(seed, 64, 64), truth.shape),
        "another scene's truth": np.roll(truth, 1, axis=0),
        "truth shifted 8 px": np.roll(truth, 8, axis=1),
        "truth blurred (σ 1.5 px)": _blur(truth, 1.5),
    }
    frames = jnp.asarray(np.stack([infrared, *outputs.values()]))  # one batch, one compile
    tokens = _tokens_fn(config)(params, frames.reshape(-1, *frames.shape[2:]))
    tokens = [t.reshape(len(frames), scenes, *t.shape[1:]) for t in tokens]
    return {
        k: float(global_cs_loss([t[0] for t in tokens], [t[i + 1] for t in tokens]))
        for i, k in enumerate(outputs)
    }


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (n, S, S, C) frames over rows and columns, edges replicated."""
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.asarray(frames, np.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return out.astype(np.float32)


@functools.lru_cache(maxsize=4)
def _tokens_fn(config: ViTConfig) -> Callable:
    vit = FeatureViT(config)
    return jax.jit(lambda params, x: vit.apply({"params": params}, x, LAYERS))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cptrans_jax.demo_vit", description=__doc__)
    p.add_argument("--out", help="write the pretrained demo ViT to this .npz")
    p.add_argument(
        "--check",
        nargs="?",
        const="",
        metavar="NPZ",
        help="print L_cs of truth vs wrong outputs under NPZ (no NPZ: a random ViT)",
    )
    p.add_argument("--steps", type=int, default=400)
    p.add_argument(
        "--cells", type=int, default=CELLS, help="target cells per patch side (1: whole patch)"
    )
    p.add_argument(
        "--colour_weight",
        type=float,
        default=COLOUR_WEIGHT,
        help="weight of the cells' mean-colour target (0: classes only)",
    )
    p.add_argument(
        "--patch_size",
        type=int,
        default=8,
        help="ViT patch size in px (train with --config.model.vit.patch_size set to it)",
    )
    args = p.parse_args(argv)
    try:  # one-line errors before any work: the patch must divide the frame, the cells it
        config = demo_vit_config(args.patch_size)
    except ValueError as e:
        p.error(f"--{e}")
    if args.cells < 1 or args.patch_size % args.cells:
        p.error(f"--patch_size must be a multiple of --cells ({args.cells}), got {args.patch_size}")
    if args.out:
        params = pretrain(
            config, steps=args.steps, cells=args.cells, colour_weight=args.colour_weight
        )
        save_npz(params, args.out)
        print(f"wrote {args.out}")
    if args.check is not None:
        from cptrans_jax.convert import init_vit_params, load_vit_params

        params = (
            load_vit_params(args.check, config)
            if args.check
            else init_vit_params(config, jax.random.key(1))  # the trainer's random ViT
        )
        for k, v in cs_check(params, config).items():
            print(f"L_cs(infrared, {k}): {v:.4f}")
    if not args.out and args.check is None:
        p.error("give --out and/or --check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
