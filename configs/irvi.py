"""CPTrans on IRVI (I2V-GAN's infrared/visible data; scene traffic or monitoring).

    python -m cptrans_jax.train --config configs/irvi.py:scene=traffic \
        --config.data.data_dir=/data/tfds --config.model.vit_weights=/weights/B_16-...-res_384.npz \
        --workdir runs/irvi_traffic

Ablations: ``configs/irvi.py:variant=baseline|no_co|no_ctn``. The paper's numbers (the
defaults of ``base_config``): Adam lr 2e-6, β (0.5, 0.999), 100 epochs, batch 1, 256×256 crops
of 286×286 frames, λ1 = 6, λ2 = 10, η = 0.4; λ_inc = 2 and the CTN flow scale are our choices
(SPEC §8).

Build the scene first (README, "Data"); ``:layout=frames`` trains on a scene built from plain
frame folders instead of the authors' packed files.
"""

from cptrans_jax.config import scene_config
from cptrans_jax.data.layouts import DATASETS


def get_config(arg: str | None = None):
    return scene_config("configs/irvi.py", "irvi", DATASETS["irvi"].scenes, arg)
