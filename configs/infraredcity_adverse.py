"""CPTrans on InfraredCity-Adverse (CPTrans's rain and snow scenes).

    python -m cptrans_jax.train --config configs/infraredcity_adverse.py:scene=rain \
        --config.data.data_dir=/data/tfds --config.model.vit_weights=/weights/B_16-...-res_384.npz \
        --workdir runs/ica_rain

Scenes: rain, snow. Ablations: ``:variant=baseline|no_co|no_ctn``. Paper numbers as in
configs/irvi.py.

Build the scene first (README, "Data"); ``:layout=frames`` trains on a scene built from plain
frame folders instead of the authors' packed files.
"""

from cptrans_jax.config import scene_config
from cptrans_jax.data.layouts import DATASETS


def get_config(arg: str | None = None):
    return scene_config(
        "configs/infraredcity_adverse.py",
        "infraredcity_adverse",
        DATASETS["infraredcity_adverse"].scenes,
        arg,
    )
