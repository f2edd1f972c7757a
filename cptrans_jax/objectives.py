"""CPTrans (with its ablations) and ROMA assembled from the loss terms (SPEC §4).

Each method is one function ``d_and_g_losses`` style pair used by :mod:`cptrans_jax.steps`:

* :func:`discriminator_phase` computes, from the stop-gradient fakes, the D loss as a function
  of the D params together with everything the G step reuses (the CO weights w̃ of the fakes);
* :func:`generator_loss` is the G objective as a function of the translated frames' ViT tokens,
  the translated frames themselves and the G params (for CTN's second G pass), evaluated with
  the *updated* D.

Splitting G's objective at the tokens lets the step reuse one G forward and one ViT forward of
the fakes for both the D step and the G step (pull-backs via ``jax.vjp``), which is the same
mathematics as recomputing them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from cptrans_jax.losses import content_aware, gan, similarity, temporal
from cptrans_jax.models import (
    ROMA_SCALES,
    Discriminator,
    FeatureViT,
    Generator,
    multiscale_tokens,
)

Params = Any
METHODS = ("cptrans", "roma")
VARIANTS = ("full", "baseline", "no_co", "no_ctn")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Everything the objective needs that is not a network or a weight (SPEC §4, §8)."""

    method: str = "cptrans"
    use_co: bool = True  # content-aware optimization (CPTrans §3.2)
    use_ctn: bool = True  # content-aware temporal normalization (CPTrans §3.3)
    lambda_cs: float = 6.0  # λ1, global cross-similarity
    lambda_ctn: float = 10.0  # λ2
    eta: float = 0.4  # fraction of content-rich patches
    lambda_inc: float = 2.0  # SPEC §8: not given in the paper; must exceed 1
    co_impl: str = "fast"  # "fast" (closed form) or "vmap" (per-patch gradients)
    co_chunk_size: int = 64  # patches per vmap chunk (memory bound of the reference path)
    ctn_gamma: float = temporal.DEFAULT_CTN_GAMMA
    ctn_sigma: float = temporal.DEFAULT_CTN_SIGMA
    vit_layers: tuple[int, ...] = (1, 3, 5)  # token layers; D reads the last one
    # ROMA (ACM MM 2022) weights and its local-window sampling.
    roma_lambda_global: float = 5.0
    roma_lambda_local: float = 5.0
    roma_lambda_motion: float = 1.0
    roma_local_centers: int = 64
    roma_scales: tuple[int, ...] = ROMA_SCALES

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"objective.method must be one of {METHODS}, got {self.method!r}")
        if self.co_impl not in ("fast", "vmap"):
            raise ValueError(f"objective.co_impl must be 'fast' or 'vmap', got {self.co_impl!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"objective.eta must be in [0, 1], got {self.eta}")
        if self.lambda_inc <= 0:
            raise ValueError(f"objective.lambda_inc must be > 0, got {self.lambda_inc}")
        if self.co_chunk_size < 1:
            raise ValueError(f"objective.co_chunk_size must be ≥ 1, got {self.co_chunk_size}")
        if not self.vit_layers:
            raise ValueError("objective.vit_layers must name at least one ViT block")

    @property
    def frames_per_sample(self) -> int:
        """Clip length the method trains on: ROMA pairs adjacent frames, CPTrans uses one."""
        return 2 if self.method == "roma" else 1


def cptrans_variant(variant: str, **overrides: Any) -> ObjectiveConfig:
    """The paper's CPTrans objective or one of its ablations (SPEC §4 "Full objectives")."""
    flags = {
        "full": (True, True),
        "baseline": (False, False),
        "no_co": (False, True),
        "no_ctn": (True, False),
    }
    if variant not in flags:
        raise ValueError(f"CPTrans variant must be one of {VARIANTS}, got {variant!r}")
    use_co, use_ctn = flags[variant]
    return ObjectiveConfig(method="cptrans", use_co=use_co, use_ctn=use_ctn, **overrides)


@dataclasses.dataclass(frozen=True)
class Networks:
    """The three Flax modules (static structure; their params live in the train state).

    Each module carries the precision policy (``dtype``, ``precision``;
    :mod:`cptrans_jax.precision`) and returns float32, so every loss below is reduced in
    float32 whatever the networks compute in.
    """

    generator: Generator
    vit: FeatureViT
    discriminator: Discriminator

    def translate(self, g_params: Params, frames: jax.Array) -> jax.Array:
        return self.generator.apply({"params": g_params}, frames)

    def tokens(self, vit_params: Params, frames: jax.Array, layers: Sequence[int]) -> list:
        return self.vit.apply({"params": vit_params}, frames, tuple(layers))

    def local_tokens(
        self, vit_params: Params, frames: jax.Array, centers: jax.Array, layers: Sequence[int]
    ) -> list:
        vit = self.vit
        return vit.apply(
            {"params": vit_params}, frames, centers, tuple(layers), method=vit.local_tokens
        )

    def discriminate(self, d_params: Params, tokens: jax.Array) -> jax.Array:
        return self.discriminator.apply({"params": d_params}, tokens)

    def co_discriminate(self, d_params: Params, tokens: jax.Array) -> jax.Array:
        """D at float32 and ``Precision.HIGHEST`` whatever the policy: the network whose
        per-patch gradients the vmap CO path differentiates. CO's statistics are float32 on both
        paths (the fast path's closed form reads the float32 params directly), so the two paths
        agree under bfloat16 too and the selection does not hinge on bfloat16 rounding of D."""
        # dtype None: no cast — the float32 params and tokens (float64 in float64 tests).
        d = self.discriminator.clone(dtype=None, precision=jax.lax.Precision.HIGHEST)
        return d.apply({"params": d_params}, tokens)


def ctn_noise_for(rng: jax.Array, frames: jax.Array) -> jax.Array:
    """CTN's noise z for a batch of frames, from the iteration's key (its own stream)."""
    b, h, w, _ = frames.shape
    return temporal.ctn_noise(jax.random.fold_in(rng, 0), b, h, w)


def roma_centers_for(rng: jax.Array, num_patches: int, k: int) -> jax.Array:
    """ROMA's K distinct local-window centre ids for this iteration (its own stream)."""
    return jax.random.choice(jax.random.fold_in(rng, 1), num_patches, (k,), replace=False)


def _d_input(cfg: ObjectiveConfig, tokens: jax.Array) -> jax.Array:
    """What D sees: raw tokens (CPTrans) or tokens + multiscale windows (ROMA)."""
    if cfg.method == "roma":
        return multiscale_tokens(tokens, cfg.roma_scales)
    return tokens


def _flatten_frames(clips: jax.Array) -> jax.Array:
    """(B, T, H, W, C) clips → (B·T, H, W, C) frames, sample-major."""
    return clips.reshape((-1,) + clips.shape[2:])


def discriminator_phase(
    nets: Networks,
    cfg: ObjectiveConfig,
    d_params: Params,
    real_tokens: jax.Array,
    fake_tokens: jax.Array,
) -> tuple[Callable[[Params], tuple[jax.Array, dict]], dict]:
    """The D loss as a function of D params, and what the G step reuses.

    ``real_tokens``/``fake_tokens``: the last ViT layer's tokens (frames, N, C) of visible and
    (stop-gradient) translated frames. CO weights are computed with the pre-update D.
    """
    real_in, fake_in = _d_input(cfg, real_tokens), _d_input(cfg, fake_tokens)
    stats: dict[str, jax.Array] = {}
    if cfg.method == "cptrans" and cfg.use_co:

        def weights_for(tokens: jax.Array, target: float) -> tuple[jax.Array, ...]:
            return content_aware.co_weights_for(
                d_params,
                tokens,
                target,
                eta=cfg.eta,
                lambda_inc=cfg.lambda_inc,
                impl=cfg.co_impl,
                chunk_size=cfg.co_chunk_size,
                d_apply=nets.co_discriminate,
            )

        w_real, _, delta_real = weights_for(real_in, 1.0)
        w_fake, selected_fake, delta_fake = weights_for(fake_in, 0.0)
        stats = {
            "co/mean_weight_real": jnp.mean(w_real),
            "co/mean_weight_fake": jnp.mean(w_fake),
            "co/fraction_selected": jnp.mean(selected_fake.astype(jnp.float32)),
            "co/mean_delta_real": jnp.mean(delta_real),
            "co/mean_delta_fake": jnp.mean(delta_fake),
        }
    else:
        w_real = w_fake = None

    def d_loss(params: Params) -> tuple[jax.Array, dict]:
        real_term = gan.weighted_gan_loss(nets.discriminate(params, real_in), 1.0, w_real)
        fake_term = gan.weighted_gan_loss(nets.discriminate(params, fake_in), 0.0, w_fake)
        # CPTrans: ½(real + fake). ROMA: ½(½Σ_frames fake + ½Σ_frames real) — with frames
        # flattened into the batch each term is already the mean over frames.
        loss = 0.5 * (real_term + fake_term)
        return loss, {"loss/d": loss, "loss/d_real": real_term, "loss/d_fake": fake_term}

    return d_loss, {"w_fake": w_fake, "stats": stats}


def generator_loss(
    nets: Networks,
    cfg: ObjectiveConfig,
    *,
    fake_layers: list,
    fake: jax.Array,
    g_params: Params,
    d_params: Params,
    vit_params: Params,
    src_frames: jax.Array,
    src_layers: list,
    w_fake: jax.Array | None,
    rng: jax.Array,
    batch_size: int,
) -> tuple[jax.Array, dict]:
    """G's objective (to differentiate w.r.t. ``fake_layers``, ``fake`` and ``g_params``).

    ``fake_layers`` are the ViT tokens of ``fake`` = G(src_frames) for ``cfg.vit_layers``;
    ``d_params`` is the updated D; ``src_layers`` the tokens of the source frames (constants).
    Frames are sample-major: ROMA's are (sample, t) pairs flattened to 2·batch_size frames.
    """
    d_out = nets.discriminate(d_params, _d_input(cfg, fake_layers[-1]))
    adv = gan.weighted_gan_loss(d_out, 1.0, w_fake)
    terms = {"loss/g_adv": adv}
    if cfg.method == "cptrans":
        cs = similarity.global_cs_loss(src_layers, fake_layers)
        total = adv + cfg.lambda_cs * cs
        terms["loss/g_cs"] = cs
        if cfg.use_ctn:
            grid = nets.vit.config.grid
            b = fake.shape[0]
            weight_map = (
                jnp.ones((b, grid, grid), fake.dtype)
                if w_fake is None
                else w_fake.reshape(b, grid, grid)
            )
            noise = ctn_noise_for(rng, fake)
            flow = temporal.ctn_flow(weight_map, noise, cfg.ctn_gamma, cfg.ctn_sigma)
            fake_of_warped = nets.translate(g_params, temporal.warp(src_frames, flow))
            ctn = temporal.ctn_loss(temporal.warp(fake, flow), fake_of_warped)
            total = total + cfg.lambda_ctn * ctn
            terms["loss/g_ctn"] = ctn
            terms["ctn/flow_rms_px"] = temporal.flow_rms(flow)
    else:
        glob = similarity.global_cs_loss(src_layers, fake_layers)
        centers = roma_centers_for(rng, nets.vit.config.num_patches, cfg.roma_local_centers)
        # The K centres are shared by the four images of a sample (A0, A1, G(A0), G(A1)).
        local = similarity.local_cs_loss(
            nets.local_tokens(vit_params, src_frames, centers, cfg.vit_layers),
            nets.local_tokens(vit_params, fake, centers, cfg.vit_layers),
        )

        def by_frame(layers: list, t: int) -> list:
            return [x.reshape((batch_size, 2) + x.shape[1:])[:, t] for x in layers]

        motion = similarity.motion_loss(
            by_frame(src_layers, 0),
            by_frame(src_layers, 1),
            by_frame(fake_layers, 0),
            by_frame(fake_layers, 1),
        )
        total = (
            adv
            + cfg.roma_lambda_global * glob
            + cfg.roma_lambda_local * local
            + cfg.roma_lambda_motion * motion
        )
        terms.update({"loss/g_global": glob, "loss/g_local": local, "loss/g_motion": motion})
    terms["loss/g"] = total
    return total, terms


def source_and_target_frames(cfg: ObjectiveConfig, batch: dict) -> tuple[jax.Array, jax.Array]:
    """Infrared source and visible target frames of a batch of clips, flattened sample-major.

    ``batch["A"]``/``batch["B"]`` are (B, T, H, W, 3) in [-1, 1]; CPTrans uses frame 0 of each
    clip, ROMA the first two.
    """
    t = cfg.frames_per_sample
    for key in ("A", "B"):
        if batch[key].ndim != 5 or batch[key].shape[1] < t:
            raise ValueError(
                f"batch[{key!r}] must be (batch, frames ≥ {t}, H, W, 3) clips for "
                f"{cfg.method}, got shape {batch[key].shape}"
            )
    return _flatten_frames(batch["A"][:, :t]), _flatten_frames(batch["B"][:, :t])
