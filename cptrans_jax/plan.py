"""Command line: ``python -m cptrans_jax.plan --config configs/<set>.py --topology v5e:4x4``.

Before renting a TPU slice: compiles the trainer's own training iteration (and translate's G
forward) for a TPU topology on this CPU host, ahead of time, and prints what a step needs per
chip (HBM against the chip's, FLOPs, collectives), a roofline bound on the step time with the
steps/s and frames/s it implies for the slice, the largest per-chip batch that fits, and
translate's frames/s per chip (:mod:`cptrans_jax.tpu_plan`). Needs libtpu
(``pip install -e '.[tpu-aot]'``), no TPU, no data set and no ViT weights.

``--config`` and ``--config.<field>=<value>`` are ``train``'s; the global batch is
``--batch_per_chip`` × the topology's chips. The figures of each compile are kept in
``--cache_dir`` (keyed by the lowered program), so a repeated plan is fast. Errors are one
``error: …`` line, exit status 2.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cptrans_jax import config_cli as cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/irvi.py:scene=traffic.", lock_config=True
)
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU topology <generation>:<shape>, e.g. v5e:4x4, v5p:2x2x1, v4:2x2x1."
)
_BATCH = flags.DEFINE_integer(
    "batch_per_chip", 0, "Per-chip batch (0: the config's global batch over the chips, else 1)."
)
_LARGEST = flags.DEFINE_bool(
    "find_largest_batch", True, "Also find the largest per-chip batch that fits (2-3 compiles)."
)
_TRANSLATE_BATCH = flags.DEFINE_integer(
    "translate_batch", 8, "Batch of the translate plan on one chip (0: no translate plan)."
)
_CACHE = flags.DEFINE_string(
    "cache_dir",
    os.path.join(os.path.expanduser("~"), ".cache", "cptrans_jax", "plan"),
    "Where the figures of each compile are kept, so a repeated plan is quick; '' = none.",
)

_USAGE = (
    "usage: python -m cptrans_jax.plan --config configs/irvi.py --topology v5e:4x4 "
    "[--batch_per_chip N] [--config.<field>=<value> ...]"
)


def _parse_flags(argv: list[str]) -> list[str]:
    return cli.parse_config_flags(argv, _CONFIG, _USAGE)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # libtpu locks /tmp/libtpu_lockfile for the process that drives the TPU; a plan drives none,
    # and the lock would only stop a second plan from running beside this one.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # JAX logs at INFO that it found no TPU to attach (the compile looks for one to
    # cross-compile with): not news here.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from cptrans_jax import tpu_plan

    c = _CONFIG.value
    try:
        _, devices = tpu_plan.topology_devices(_TOPOLOGY.value)
        batch = _BATCH.value
        if batch == 0:
            g = c.data.global_batch_size
            batch = g // len(devices) if g % len(devices) == 0 else 1
        plan = tpu_plan.make_plan(
            c,
            _TOPOLOGY.value,
            batch_per_chip=batch,
            find_largest=_LARGEST.value,
            translate_batch=_TRANSLATE_BATCH.value,
            cache_dir=_CACHE.value or None,
            say=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except (tpu_plan.PlanError, ValueError) as e:
        cli.fail(cli.one_line(e))
    print("\n".join(tpu_plan.report(plan)))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "topology"])
    app.run(main, flags_parser=_parse_flags)
