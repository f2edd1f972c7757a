"""How the commands end: one-line errors and exit codes, shared by translate, fuse, evaluate and
detect_score.

A command's work runs inside ``run_command``: a ``ValueError`` or ``OSError`` (a bad path, a
corrupt frame, a bad option — the user's to fix) becomes ``error: <message>`` on stderr and exit
status 2 rather than a traceback; Ctrl-C exits 130 and, where the command asks for it, SIGTERM
exits 143, each saying what was not written. The outputs themselves are the commands' own
business: they write to temporary files that are removed when an exception passes through them,
which is why SIGTERM is turned into an exception here instead of ending the process at once.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable


class TerminatedError(BaseException):
    """SIGTERM, raised in the main thread so that temporary outputs are removed on the way out
    (a BaseException, so that no ``except Exception`` on the way takes it for a failure)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise TerminatedError()


def run_command(body: Callable[[], None], *, not_written: str, catch_sigterm: bool = False) -> int:
    """Runs ``body()`` and returns the command's exit status.

    ``not_written`` ends the interruption messages (e.g. ``"nothing written to out.mp4"``; an
    empty string says nothing more). With ``catch_sigterm``, SIGTERM is handled like Ctrl-C for
    the duration of the call (status 143) and the previous handler is restored afterwards.
    """
    suffix = f"; {not_written}" if not_written else ""
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if catch_sigterm else None
    try:
        body()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted{suffix}", file=sys.stderr)
        return 130
    except TerminatedError:
        print(f"error: terminated{suffix}", file=sys.stderr)
        return 143
    finally:
        if catch_sigterm:
            signal.signal(signal.SIGTERM, previous)
    return 0


def run_report(
    compute: Callable[[], dict],
    format_report: Callable[[dict], str],
    *,
    json_path: str | None,
    check: Callable[[], None] | None = None,
    ensure_ascii: bool = True,
) -> int:
    """``run_command`` for the commands that print a report and may save it as JSON.

    ``check()`` (the arguments) runs first; then ``--json``'s place is claimed (so a bad path
    fails before the work, not after it); then ``compute()``; the report is printed and the
    JSON file appears complete or not at all (``evaluate.OutputFile``).
    """
    out = None

    def body() -> None:
        nonlocal out
        if check is not None:
            check()
        if json_path:
            from cptrans_jax.evaluate import OutputFile  # imported here: it brings in JAX

            out = OutputFile(json_path, "--json")
        result = compute()
        print(format_report(result), flush=True)
        if out is not None:
            out.write(json.dumps(result, indent=2, ensure_ascii=ensure_ascii) + "\n")

    try:
        return run_command(body, not_written=f"{json_path} not written" if json_path else "")
    finally:
        if out is not None:
            out.discard()  # a no-op after a successful write
