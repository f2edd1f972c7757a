"""ROMA (ACM MM 2022) on InfraredCity-Lite: two-frame clips, multiscale region D.

    python -m cptrans_jax.train --config configs/roma.py:scene=city_clearday \
        --config.data.data_dir=/data/tfds --config.model.vit_weights=/weights/B_16-...-res_384.npz \
        --workdir runs/roma_city_clearday

ROMA's training script: Adam lr 1e-5, β (0.5, 0.999), 100 epochs constant then 100 epochs of
linear decay stepped per epoch, batch 1; L_G = adv + 5·global + 5·local (64 centres) + motion.

Build the scene first (README, "Data"); ``:layout=frames`` trains on a scene built from plain
frame folders instead of the authors' packed files.
"""

from cptrans_jax.config import scene_config
from cptrans_jax.data.layouts import DATASETS

SCENES = DATASETS["infraredcity_lite"].scenes


def get_config(arg: str | None = None):
    c = scene_config("configs/roma.py", "infraredcity_lite", SCENES, arg, ablations=False)
    c.method = "roma"
    c.optim.g_lr = 1e-5
    c.optim.d_lr = 1e-5
    c.optim.constant_epochs = 100
    c.optim.decay_epochs = 100
    return c
