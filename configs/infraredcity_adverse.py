"""CPTrans on InfraredCity-Adverse (CPTrans's rain and snow scenes).

    python -m cptrans_jax.train --config configs/infraredcity_adverse.py:scene=rain \
        --config.data.data_dir=/data/tfds --config.model.vit_weights=/weights/B_16-...-res_384.npz \
        --workdir runs/ica_rain

Scenes: rain, snow. Ablations: ``:variant=baseline|no_co|no_ctn``. Paper numbers as in
configs/irvi.py.
"""

from cptrans_jax.config import base_config, parse_arg

SCENES = ("rain", "snow")


def get_config(arg: str | None = None):
    args = parse_arg(arg)
    c = base_config()
    c.variant = args.pop("variant", "full")
    c.data.name = "infraredcity_adverse"
    c.data.scene = args.pop("scene", "rain")
    if c.data.scene not in SCENES:
        raise ValueError(f"configs/infraredcity_adverse.py: scene must be one of {SCENES}")
    if args:
        raise ValueError(
            f"configs/infraredcity_adverse.py takes scene= and variant=, got {sorted(args)}"
        )
    return c
