"""What stops the training loop early, and how: signals, and non-finite values.

* :class:`StopSignals` — SIGTERM (preemption) and SIGINT (Ctrl-C) become a flag the loop checks
  once per iteration; the loop then saves a checkpoint and stops. A second SIGINT while that is
  under way raises ``KeyboardInterrupt`` as usual (a user who insists), leaving the previous
  checkpoint as the newest one.
* :class:`FiniteWatch` — every iteration computes, on device, one boolean: whether its loss terms
  and updated parameters are all finite (:func:`with_finite_flag`). The host never waits for it:
  each iteration it reads the flags that are already computed, and it keeps at most
  ``max_in_flight`` iterations unchecked (which also bounds how far the host runs ahead of the
  devices). A bad flag stops the run naming the *first* bad step and its non-finite terms, so a
  divergence is caught within a couple of iterations, not at the next logging step, and nothing
  from that step on is ever saved.
"""

from __future__ import annotations

import collections
import contextlib
import signal
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from cptrans_jax.metrics import check_finite

# The key of the flag in the iteration's metrics; popped before anything is logged.
FINITE_KEY = "_finite"


class StopSignals:
    """Turns SIGTERM and SIGINT into :attr:`received` (the signal's name), checked per step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in self.SIGNALS:
            # ValueError: not the main thread (e.g. under a test runner's thread).
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def with_finite_flag(iteration: Callable) -> Callable:
    """``iteration`` with ``metrics[FINITE_KEY]``: its metrics and new G/D params all finite."""

    def run(state: Any, batch: Any, vit_params: Any, rng: Any) -> tuple[Any, dict]:
        new_state, metrics = iteration(state, batch, vit_params, rng)
        flag = _all_finite((metrics, new_state.g_params, new_state.d_params))
        return new_state, {**metrics, FINITE_KEY: flag}

    return run


class FiniteWatch:
    """Checks the per-iteration finiteness flags without a per-iteration host sync."""

    def __init__(self, max_in_flight: int = 2) -> None:
        self.max_in_flight = max_in_flight
        self._pending: collections.deque[tuple[int, dict]] = collections.deque()
        self._latest = 0

    def add(self, step: int, metrics: dict) -> dict:
        """Registers iteration ``step``'s metrics (with the flag); returns them without it."""
        metrics = dict(metrics)
        self._pending.append((step, metrics))
        self._latest = step
        rest = {k: v for k, v in metrics.items() if k != FINITE_KEY}
        self.check(block=False)
        return rest

    def check(self, *, block: bool) -> None:
        """Reads the computed flags (all of them with ``block``); raises on the first bad one.

        Raises:
            FloatingPointError: naming the first step whose terms or parameters are not finite.
        """
        while self._pending:
            step, metrics = self._pending[0]
            flag = metrics[FINITE_KEY]
            if not (block or len(self._pending) > self.max_in_flight or flag.is_ready()):
                return
            self._pending.popleft()
            if bool(jax.device_get(flag)):
                continue
            values = jax.device_get({k: v for k, v in metrics.items() if k != FINITE_KEY})
            where = (
                f" (the first non-finite step; the run had reached step {self._latest}); "
                f"nothing from step {step} on is saved"
            )
            try:
                check_finite({k: float(v) for k, v in values.items()}, step)  # names the terms
            except FloatingPointError as e:
                raise FloatingPointError(f"{e}{where}") from None
            raise FloatingPointError(
                f"non-finite parameters after step {step}, every loss term finite{where}"
            )
