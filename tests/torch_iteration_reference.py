"""One training iteration of CPTrans or ROMA in PyTorch, written from SPEC §4 (tests only).

Forward G; D step on detached fakes with CO weights from the pre-update D; G step with the
updated D; ``torch.optim`` updates. The random draws (CTN noise, ROMA centres) are passed in so
a test can feed the exact values the JAX iteration drew.
"""

from __future__ import annotations

import torch
from torch_co_reference import torch_co_weights_for, torch_weighted_gan_loss
from torch_losses_reference import (
    torch_ctn_flow,
    torch_global_cs,
    torch_local_cs,
    torch_motion,
    torch_warp,
)
from torch_reference import torch_multiscale


def torch_iteration(
    G,
    vit,
    D,
    opt_g,
    opt_d,
    clips_a,
    clips_b,
    cfg,
    *,
    noise=None,
    centers=None,
    window=7,
    co_weights=torch_co_weights_for,
) -> dict[str, float]:
    """Runs one iteration in place on G, D and their optimizers; returns every loss term.

    ``clips_a``/``clips_b``: (B, T, H, W, 3) numpy clips (our layout); ``cfg``: our
    ``ObjectiveConfig`` (read for its numbers only); ``noise``: (frames, H, W, 2) CTN noise;
    ``centers``: ROMA's local-window centre ids; ``co_weights``: how CO's ``(weights, selected,
    deltas)`` are computed (default: per-patch gradients; the full-size benchmark passes a
    closed form, since per-patch gradients are 2.7 GB per image there).
    """
    roma = cfg.method == "roma"
    t = 2 if roma else 1
    b = clips_a.shape[0]

    def frames(clips):
        x = torch.tensor(clips[:, :t]).reshape(-1, *clips.shape[2:])
        return x.permute(0, 3, 1, 2).contiguous()

    src, tgt = frames(clips_a), frames(clips_b)
    layers = tuple(cfg.vit_layers)
    d_input = torch_multiscale if roma else (lambda tokens: tokens)

    fake = G(src)
    with torch.no_grad():
        src_layers = vit(src, layers)
        real_last = vit(tgt, layers)[-1]
    fake_layers = vit(fake, layers)
    real_in, fake_in = d_input(real_last), d_input(fake_layers[-1].detach())

    w_real = w_fake = None
    if not roma and cfg.use_co:
        w_real, _, _ = co_weights(D, real_in, 1.0, cfg.eta, cfg.lambda_inc)
        w_fake, _, _ = co_weights(D, fake_in, 0.0, cfg.eta, cfg.lambda_inc)

    opt_d.zero_grad()
    d_real = torch_weighted_gan_loss(D(real_in), 1.0, w_real)
    d_fake = torch_weighted_gan_loss(D(fake_in), 0.0, w_fake)
    d_loss = 0.5 * (d_real + d_fake)
    d_loss.backward()
    opt_d.step()

    opt_g.zero_grad()
    adv = torch_weighted_gan_loss(D(d_input(fake_layers[-1])), 1.0, w_fake)
    out = {"loss/d": d_loss, "loss/d_real": d_real, "loss/d_fake": d_fake, "loss/g_adv": adv}
    if not roma:
        cs = torch_global_cs(src_layers, fake_layers)
        total = adv + cfg.lambda_cs * cs
        out["loss/g_cs"] = cs
        if cfg.use_ctn:
            g = int(round(real_last.shape[1] ** 0.5))
            wmap = torch.ones(fake.shape[0], g, g) if w_fake is None else w_fake.reshape(-1, g, g)
            flow = torch_ctn_flow(wmap, torch.tensor(noise), cfg.ctn_gamma, cfg.ctn_sigma)
            ctn = ((torch_warp(fake, flow) - G(torch_warp(src, flow))) ** 2).mean()
            total = total + cfg.lambda_ctn * ctn
            out["loss/g_ctn"] = ctn
    else:
        glob = torch_global_cs(src_layers, fake_layers)
        ids = torch.tensor(centers)
        local = torch_local_cs(
            vit.local_tokens(src, ids, window, layers), vit.local_tokens(fake, ids, window, layers)
        )

        def by_frame(tokens, i):
            return [x.reshape(b, 2, *x.shape[1:])[:, i] for x in tokens]

        motion = torch_motion(
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
        out.update({"loss/g_global": glob, "loss/g_local": local, "loss/g_motion": motion})
    out["loss/g"] = total
    total.backward()
    opt_g.step()
    return {k: float(v.detach()) for k, v in out.items()}
