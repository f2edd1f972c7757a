"""The train state pytree and one training iteration as a pure function (SPEC §4–5).

``iteration(state, batch, vit_params, base_rng) -> (state, metrics)``:

1. forward G on the infrared frames (its pull-back kept, so G runs forward once for both steps);
2. D step: CO weights from the pre-update D, LSGAN loss on real visible tokens and stop-gradient
   fake tokens, Adam update;
3. G step evaluated with the *updated* D: adversarial term with the D step's fake weights w̃,
   cross-similarity, CTN (CPTrans) or global/local/motion similarity (ROMA); Adam update.

Randomness (CTN noise, ROMA's local centres) comes from ``fold_in(base_rng, state.step)``, so a
run resumed at step k draws what the uninterrupted run drew, on any number of devices. The
frozen ViT params are an argument, never a constant baked into the compiled step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from cptrans_jax.objectives import (
    Networks,
    ObjectiveConfig,
    discriminator_phase,
    generator_loss,
    source_and_target_frames,
)

Params = Any
Schedule = Callable[[jax.Array], jax.Array]
Iteration = Callable[[Any, dict, Params, jax.Array], tuple[Any, dict]]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree."""

    step: jax.Array  # int32 scalar: iterations done
    g_params: Params
    d_params: Params
    g_opt_state: optax.OptState
    d_opt_state: optax.OptState


def iteration_key(base_rng: jax.Array, step: jax.Array | int) -> jax.Array:
    """The key of iteration ``step``: a function of the base key and the step only."""
    return jax.random.fold_in(base_rng, step)


def adam(learning_rate: float | Schedule) -> optax.GradientTransformation:
    """The papers' Adam: β = (0.5, 0.999), eps 1e-8, no weight decay."""
    return optax.adam(learning_rate, b1=0.5, b2=0.999, eps=1e-8)


def init_train_state(
    nets: Networks,
    g_tx: optax.GradientTransformation,
    d_tx: optax.GradientTransformation,
    rng: jax.Array,
    frame_size: tuple[int, int],
) -> TrainState:
    """Fresh G and D params (SPEC init) and their optimizer states."""
    kg, kd = jax.random.split(rng)
    frames = jnp.zeros((1, *frame_size, 3), jnp.float32)
    g_params = nets.generator.init(kg, frames)["params"]
    tokens = jnp.zeros((1, 1, nets.discriminator.width), jnp.float32)
    d_params = nets.discriminator.init(kd, tokens)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        g_params=g_params,
        d_params=d_params,
        g_opt_state=g_tx.init(g_params),
        d_opt_state=d_tx.init(d_params),
    )


def make_iteration(
    nets: Networks,
    cfg: ObjectiveConfig,
    g_tx: optax.GradientTransformation,
    d_tx: optax.GradientTransformation,
    *,
    g_lr: Schedule | None = None,
    d_lr: Schedule | None = None,
) -> Iteration:
    """The pure training iteration of ``cfg.method`` (see the module docstring).

    ``g_lr``/``d_lr``, when given, are the schedules inside ``g_tx``/``d_tx``; they are only
    evaluated to report the learning rates in the metrics.
    """
    if nets.vit.config.width != nets.discriminator.width:
        raise ValueError(
            f"discriminator width {nets.discriminator.width} must equal the ViT width "
            f"{nets.vit.config.width} (D reads ViT tokens)"
        )
    layers = tuple(cfg.vit_layers)
    if max(layers) >= nets.vit.config.depth:
        raise ValueError(
            f"objective.vit_layers {layers} need ViT blocks up to {max(layers)}, but the ViT "
            f"has depth {nets.vit.config.depth}"
        )
    if cfg.method == "roma" and cfg.roma_local_centers > nets.vit.config.num_patches:
        raise ValueError(
            f"objective.roma_local_centers = {cfg.roma_local_centers} exceeds the "
            f"{nets.vit.config.num_patches} ViT patches to draw distinct centres from"
        )

    def iteration(
        state: TrainState, batch: dict, vit_params: Params, base_rng: jax.Array
    ) -> tuple[TrainState, dict]:
        rng = iteration_key(base_rng, state.step)
        src, tgt = source_and_target_frames(cfg, batch)
        batch_size = batch["A"].shape[0]

        # 1. G forward once; its pull-back turns ∂L/∂fake into ∂L/∂θ_G in the G step.
        fake, g_pull = jax.vjp(lambda p: nets.translate(p, src), state.g_params)
        fake_layers, vit_pull = jax.vjp(lambda f: nets.tokens(vit_params, f, layers), fake)
        src_layers = nets.tokens(vit_params, src, layers)
        real_tokens = nets.tokens(vit_params, tgt, layers[-1:])[0]

        # 2. D step on stop-gradient fakes, CO weights from the pre-update D.
        d_loss_fn, reuse = discriminator_phase(
            nets, cfg, state.d_params, real_tokens, jax.lax.stop_gradient(fake_layers[-1])
        )
        (_, d_terms), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d_params)
        d_updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state, state.d_params)
        d_params = optax.apply_updates(state.d_params, d_updates)

        # 3. G step with the updated D; w̃ from the D step is reused (SPEC §8).
        def g_objective(fake_layers: list, fake: jax.Array, g_params: Params):
            return generator_loss(
                nets,
                cfg,
                fake_layers=fake_layers,
                fake=fake,
                g_params=g_params,
                d_params=d_params,
                vit_params=vit_params,
                src_frames=src,
                src_layers=src_layers,
                w_fake=reuse["w_fake"],
                rng=rng,
                batch_size=batch_size,
            )

        (_, g_terms), (d_fake_layers, d_fake, g_direct) = jax.value_and_grad(
            g_objective, argnums=(0, 1, 2), has_aux=True
        )(fake_layers, fake, state.g_params)
        (d_fake_via_vit,) = vit_pull(d_fake_layers)
        (g_grads,) = g_pull(d_fake + d_fake_via_vit)
        g_grads = jax.tree.map(jnp.add, g_grads, g_direct)
        g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
        g_params = optax.apply_updates(state.g_params, g_updates)

        metrics = {**d_terms, **g_terms, **reuse["stats"]}
        if g_lr is not None:
            metrics["lr/g"] = jnp.asarray(g_lr(state.step), jnp.float32)
        if d_lr is not None:
            metrics["lr/d"] = jnp.asarray(d_lr(state.step), jnp.float32)
        new_state = TrainState(
            step=state.step + 1,
            g_params=g_params,
            d_params=d_params,
            g_opt_state=g_opt_state,
            d_opt_state=d_opt_state,
        )
        return new_state, metrics

    return iteration
