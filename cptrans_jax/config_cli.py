"""What the command lines share: one ``error: …`` line (exit status 2) for a bad ``--config``.

``python -m cptrans_jax.train`` and ``python -m cptrans_jax.plan`` take the same ``--config``
file and ``--config.<field>=<value>`` overrides (ml_collections ``config_flags``); a missing
config file, a bad config argument or an unknown field is reported here in one line instead of
absl's traceback. Nothing here imports JAX, so a command can still set JAX's environment
after parsing its flags.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

from absl import flags


def fail(message: str, usage: str | None = None) -> NoReturn:
    print(f"error: {message}" + (f"\n{usage}" if usage else ""), file=sys.stderr)
    sys.exit(2)


def root_cause(e: BaseException) -> BaseException:
    seen = set()
    while (e.__cause__ or e.__context__) is not None and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return e


def one_line(text: Any) -> str:
    return " ".join(str(text).split())


def config_file_problem(e: BaseException, argv: list[str]) -> str:
    """What went wrong loading ``--config``: a missing file or its ``get_config`` refusing."""
    root = root_cause(e)
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
        return f"config {spec}: {one_line(root.args[0])}"
    return f"config {spec}: {one_line(root)}"


def parse_config_flags(argv: list[str], config: flags.FlagHolder, usage: str) -> list[str]:
    """absl's parsing of ``argv``, with one line instead of a traceback for a bad config file
    or override (``config`` is the command's ``DEFINE_config_file`` holder)."""
    try:
        rest = flags.FLAGS(argv)
        if config.value is not None:
            config.value.get("method")  # a config file that failed to load raises here
        return rest
    except flags.Error as e:
        if "--config" in str(e) and "flag --config=" in str(e):
            fail(config_file_problem(e, argv))
        fail(one_line(e), usage)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # An unknown field: ml_collections raises AttributeError(KeyError(text)), the text
        # naming the field and suggesting the nearest one.
        key_errors = [a for a in e.args if isinstance(a, KeyError)]
        if isinstance(e, AttributeError) and isinstance(root_cause(e), KeyError):
            key_errors.append(root_cause(e))
        if key_errors:
            overrides = [a for a in argv[1:] if a.startswith("--config.")]
            text = max((str(k.args[0]) if k.args else "" for k in key_errors), key=len)
            text = one_line(text.replace("'", "").replace("\n", "; "))
            fail(
                f"bad config override among {overrides}: unknown field {text} (the fields and "
                "their types are those of cptrans_jax/config.py:base_config())"
            )
        fail(config_file_problem(e, argv))
    except OSError as e:  # config_flags reports a file it could not load as IOError
        fail(config_file_problem(e, argv))


def use_cpu_devices(count: int) -> None:
    """Makes JAX split this host's CPU into ``count`` devices (0: JAX's default, one).

    Must run before anything touches a JAX device: the CPU backend reads it when it starts.
    ``count`` is a validated ``train.cpu_devices`` (``config.validate`` refuses a negative one).
    """
    if count:
        import jax

        jax.config.update("jax_num_cpu_devices", count)
