"""Command line: ``python -m cptrans_jax.train --config configs/<set>.py[:args] --workdir DIR``.

Flags are parsed here and everything else happens in :func:`cptrans_jax.trainer.train`.
``--config.<field>=<value>`` overrides any config field; an unknown config file, a bad config
argument, an unknown field or a bad value stops the run before anything is built, with one
``error: …`` line naming it (exit status 2), as does every refused start and every failure the
trainer reports (a busy, read-only or full work directory, an unreadable checkpoint, a failed
save, a divergence). SIGTERM saves and exits 0; Ctrl-C (SIGINT) saves and exits 130. Several
processes (a TPU pod, SLURM, ``launch/local_multiprocess.sh``) are joined with
``jax.distributed.initialize()`` when ``--multiprocess`` is given; JAX reads the coordinator
from the environment there.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cptrans_jax import config_cli as cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/irvi.py:scene=traffic.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, samples).")
_MULTIPROCESS = flags.DEFINE_bool(
    "multiprocess", False, "Call jax.distributed.initialize() first (multi-host / multi-process)."
)
# Only needed where JAX cannot read them from the environment (TPU pods and SLURM need none).
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")

_USAGE = (
    "usage: python -m cptrans_jax.train --config configs/demo.py --workdir runs/demo "
    "[--config.<field>=<value> ...]"
)


def _fail(message: str, *, usage: bool = False) -> None:
    cli.fail(message, _USAGE if usage else None)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with one line instead of a traceback for a bad config or override."""
    return cli.parse_config_flags(argv, _CONFIG, _USAGE)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    # Orbax logs every checkpoint step at INFO through absl; keep the console to our progress
    # lines unless the user asks for more with --verbosity.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from cptrans_jax import config as config_lib

    try:
        # Here, not only in the trainer: train.cpu_devices is used before JAX starts.
        config_lib.validate(_CONFIG.value)
    except ValueError as e:
        _fail(cli.one_line(e))
    cli.use_cpu_devices(_CONFIG.value.train.cpu_devices)
    if _MULTIPROCESS.value:
        # (CPU devices of different processes already talk through gloo by default.)
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    from cptrans_jax import trainer
    from cptrans_jax.orbax_errors import quiet_orbax_failures

    quiet_orbax_failures()  # a failed save is reported in one line below
    try:
        trainer.train(_CONFIG.value, _WORKDIR.value)
    except KeyboardInterrupt:
        # The trainer saved at the end of the iteration (or had nothing new to save).
        sys.exit(130)
    except (ValueError, OSError, NotImplementedError, FloatingPointError) as e:
        # Configuration, input, file-system and divergence errors are the user's to read, not
        # tracebacks.
        _fail(cli.one_line(e))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=_parse_flags)
