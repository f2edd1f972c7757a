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
