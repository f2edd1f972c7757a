"""CPTrans on InfraredCity-Lite (ROMA's nighttime infrared → daytime visible data).

    python -m cptrans_jax.train --config configs/infraredcity_lite.py:scene=city_clearday \
        --config.data.data_dir=/data/tfds --config.model.vit_weights=/weights/B_16-...-res_384.npz \
        --workdir runs/icl_city_clearday

Scenes: city_clearday, city_overcast, highway_clearday, highway_overcast, monitor. Ablations:
``:variant=baseline|no_co|no_ctn``. Paper numbers as in configs/irvi.py.

Build the scene first (README, "Data"); ``:layout=frames`` trains on a scene built from plain
frame folders instead of the authors' packed files.
"""

from cptrans_jax.config import scene_config
from cptrans_jax.data.layouts import DATASETS

SCENES = DATASETS["infraredcity_lite"].scenes


def get_config(arg: str | None = None):
    return scene_config("configs/infraredcity_lite.py", "infraredcity_lite", SCENES, arg)
