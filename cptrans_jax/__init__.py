"""cptrans-jax: CPTrans (CVPR 2023) and ROMA (ACM MM 2022) in JAX/Flax.

Unpaired nighttime-infrared → daytime-visible video translation. See README.md for the
commands and ``shared/SPEC.md`` in the project's documentation for the mathematics.
"""

__version__ = "0.1.0"
