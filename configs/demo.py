"""Built-in demo: tiny networks on procedural infrared/visible street clips, no download.

    python -m cptrans_jax.train --config configs/demo.py --workdir runs/demo

Trains CPTrans (CO + CTN) for 2,048 steps (4 to 5½ minutes on an idle 2-core CPU) with a frozen
6-block ViT loaded from ``configs/demo_vit.npz`` — the demo's stand-in for the ViT-B/16-384
weights of the real runs, pretrained to tell background, road and objects apart on the demo's
unpaired training scenes (``python -m cptrans_jax.demo_vit --out configs/demo_vit.npz`` remakes
it; with a random ViT instead, ``--config.model.vit_weights=''``, the structural loss cannot
see the layout and the translations ignore their input). Score a run with
``python -m cptrans_jax.demo_quality runs/demo``. ``configs/demo.py:method=roma`` runs ROMA on
two-frame clips instead; ``configs/demo.py:variant=no_co`` an ablation.
"""

import os

from cptrans_jax.config import base_config, parse_arg

DEMO_VIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_vit.npz")


def get_config(arg: str | None = None):
    args = parse_arg(arg)
    c = base_config()
    c.method = args.pop("method", "cptrans")
    c.variant = args.pop("variant", "full")
    if args:
        raise ValueError(f"configs/demo.py takes method= and variant=, got {sorted(args)}")
    c.data.name = "demo"
    c.data.frame_size = 64
    c.data.load_size = 64
    c.data.global_batch_size = 2
    c.data.epoch_size = 1024  # 512 steps per epoch
    c.model.ngf = 16
    c.model.n_blocks = 3
    c.model.vit_preset = "custom"
    c.model.vit_weights = DEMO_VIT
    # An 8×8 token grid on the 64-px frames as they are: finer than 6×6 tokens of the frames
    # resized to 96 (better layout scores with the pretrained demo ViT) and no slower.
    c.model.vit.image_size = 64
    c.model.vit.patch_size = 8
    c.model.vit.width = 64
    c.model.vit.depth = 6
    c.model.vit.num_heads = 4
    c.model.vit.mlp_dim = 128
    c.model.vit.local_window = 3
    c.objective.roma_local_centers = 8
    c.objective.ctn_gamma = 10.0  # ≈2 px RMS displacement at 64×64
    c.objective.ctn_sigma = 2.0
    c.optim.g_lr = 2e-4  # tiny networks from scratch learn at the usual GAN rate
    c.optim.d_lr = 2e-4
    c.optim.constant_epochs = 2  # 2,048 steps in all: 3:44 / 5:29 on two idle 2-core CPUs
    c.optim.decay_epochs = 2
    # This G (ngf 16 at 64², batch 2) is faster with XLA:CPU's own convolutions than with the
    # im2col matmuls that train.conv_impl="auto" picks on CPUs: 300–400-step demo runs
    # (--config.train.max_steps=300, README) went at 10.3 against 7.6–8.0 it/s on the idle
    # 2-core machine (2026-12-03). One XLA:CPU device (both cores on each op) beat the batch
    # split over two devices there: 10.3 against 8.6 it/s; on an AVX2-only one (2026-12-04)
    # two devices were the faster, 7.5 against 6.8 it/s (README). Kept at one: the split
    # changes the arithmetic, so every demo score reported would change with it.
    c.train.conv_impl = "lax"
    c.train.cpu_devices = 0
    c.train.log_every = 100
    c.train.sample_every = 500
    c.train.checkpoint_every = 500
    return c
