"""CPTrans on InfraredCity-Lite (ROMA's nighttime infrared → daytime visible data).

    python -m cptrans_jax.train --config configs/infraredcity_lite.py:scene=city_clearday \
        --config.data.data_dir=/data/tfds --config.model.vit_weights=/weights/B_16-...-res_384.npz \
        --workdir runs/icl_city_clearday

Scenes: city_clearday, city_overcast, highway_clearday, highway_overcast, monitor. Ablations:
``:variant=baseline|no_co|no_ctn``. Paper numbers as in configs/irvi.py.
"""

from cptrans_jax.config import base_config, parse_arg

SCENES = ("city_clearday", "city_overcast", "highway_clearday", "highway_overcast", "monitor")


def get_config(arg: str | None = None):
    args = parse_arg(arg)
    c = base_config()
    c.variant = args.pop("variant", "full")
    c.data.name = "infraredcity_lite"
    c.data.scene = args.pop("scene", "city_clearday")
    if c.data.scene not in SCENES:
        raise ValueError(f"configs/infraredcity_lite.py: scene must be one of {SCENES}")
    if args:
        raise ValueError(
            f"configs/infraredcity_lite.py takes scene= and variant=, got {sorted(args)}"
        )
    return c
