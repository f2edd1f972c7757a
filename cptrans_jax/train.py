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

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

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
    print(f"error: {message}" + (f"\n{_USAGE}" if usage else ""), file=sys.stderr)
    sys.exit(2)


def _root_cause(e: BaseException) -> BaseException:
    seen = set()
    while (e.__cause__ or e.__context__) is not None and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return e


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _config_file_problem(e: BaseException, argv: list[str]) -> str:
    """What went wrong loading ``--config``: a missing file or its ``get_config`` refusing."""
    root = _root_cause(e)
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[:-1]:
        spec = argv[argv.index("--config") + 1]
    path = (spec or "").split(":", 1)[0]
    if isinstance(root, FileNotFoundError) or (path and not os.path.isfile(path)):
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            folder = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
        known = (
            sorted(n for n in os.listdir(folder) if n.endswith(".py"))
            if os.path.isdir(folder)
            else []
        )
        listed = ", ".join(os.path.join(os.path.relpath(folder), n) for n in known) or "none"
        return f"config file {path or '(none given)'} not found; the configs are: {listed}"
    if isinstance(root, KeyError) and root.args:
        return f"config {spec}: {_one_line(root.args[0])}"
    return f"config {spec}: {_one_line(root)}"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with one line instead of a traceback for a bad config or override."""
    try:
        rest = flags.FLAGS(argv)
        if _CONFIG.value is not None:
            _CONFIG.value.get("method")  # a config file that failed to load raises here
        return rest
    except flags.Error as e:
        if "--config" in str(e) and "flag --config=" in str(e):
            _fail(_config_file_problem(e, argv))
        _fail(_one_line(e), usage=True)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # An unknown field: ml_collections raises AttributeError(KeyError(text)), the text
        # naming the field and suggesting the nearest one.
        key_errors = [a for a in e.args if isinstance(a, KeyError)]
        if isinstance(e, AttributeError) and isinstance(_root_cause(e), KeyError):
            key_errors.append(_root_cause(e))
        if key_errors:
            overrides = [a for a in argv[1:] if a.startswith("--config.")]
            text = max((str(k.args[0]) if k.args else "" for k in key_errors), key=len)
            text = _one_line(text.replace("'", "").replace("\n", "; "))
            _fail(
                f"bad config override among {overrides}: unknown field {text} (the fields and "
                "their types are those of cptrans_jax/config.py:base_config())"
            )
        _fail(_config_file_problem(e, argv))
    except OSError as e:  # config_flags reports a file it could not load as IOError
        _fail(_config_file_problem(e, argv))
    return []  # not reached


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    # Orbax logs every checkpoint step at INFO through absl; keep the console to our progress
    # lines unless the user asks for more with --verbosity.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
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
        _fail(_one_line(e))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=_parse_flags)
