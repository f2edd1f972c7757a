"""A built-in procedural data set: small unpaired "street-like" clips drawn with numpy, no download.

It exists so the trainer, the checkpoint/resume path and multi-host sharding can be exercised
anywhere without the real data sets. The scenes themselves are drawn by
:mod:`cptrans_jax.data.demo_scenes`; this module streams them as unpaired training batches.

Determinism: example k of domain d is a pure function of ``(seed, d, k, frame_size,
clip_length)`` (its own ``np.random.default_rng([seed, d, k])``), so any step can be regenerated
from the step number alone and a resumed stream is bit-identical. Global step s uses the infrared
examples ``[s·G, (s+1)·G)`` (G the global batch) and, for the visible side, a per-epoch seeded
permutation of the same range, so the pairing of A and B rows changes every epoch (unpaired).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cptrans_jax.data.demo_scenes import INFRARED, VISIBLE, infrared_clips, visible_clips
from cptrans_jax.data.source import host_slice

__all__ = ["INFRARED", "VISIBLE", "DemoSource", "infrared_clips", "visible_clips"]

# The pairing permutation's stream tag (demo_scenes.INFRARED and VISIBLE are 0 and 1).
_PAIRING = 2


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class DemoSource:
    """Procedural unpaired infrared/visible clips implementing ``ClipSource``.

    Args:
      frame_size: S, frames are S×S (a multiple of 4, >= 16: the generator downsamples by 4).
      clip_length: T, frames per clip (>= 1; CPTrans reads frame 0, ROMA frames 0 and 1).
      global_batch_size: G, rows per global step over all processes.
      seed: selects the data set; non-negative.
      process_index, process_count: this process's place; it yields rows ``host_slice(G, ...)``.
      epoch_size: examples per epoch; ``steps_per_epoch = epoch_size // G``.
    """

    def __init__(
        self,
        *,
        frame_size: int,
        clip_length: int,
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        epoch_size: int = 256,
    ) -> None:
        self.frame_size = _check_int("frame_size", frame_size, 16)
        if self.frame_size % 4:
            raise ValueError(f"frame_size must be a multiple of 4, got {frame_size}")
        self.clip_length = _check_int("clip_length", clip_length, 1)
        self.global_batch_size = _check_int("global_batch_size", global_batch_size, 1)
        self.seed = _check_int("seed", seed, 0)  # default_rng rejects negative seed words
        self.epoch_size = _check_int("epoch_size", epoch_size, 1)
        process_count = _check_int("process_count", process_count, 1)
        if self.global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not divisible by "
                f"process_count {process_count}"
            )
        self._rows = host_slice(self.global_batch_size, process_index, process_count)
        self.process_index, self.process_count = int(process_index), process_count
        self.local_batch_size = self.global_batch_size // process_count
        self.steps_per_epoch = self.epoch_size // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"epoch_size {self.epoch_size} is smaller than global_batch_size "
                f"{self.global_batch_size}: an epoch would have 0 steps"
            )
        self._step = 0
        self._perm_epoch = -1
        self._perm = np.empty(0, np.int64)

    def _pairing(self, epoch: int) -> np.ndarray:
        """The epoch's seeded permutation of its examples, which picks each row's visible clip."""
        if epoch != self._perm_epoch:  # one permutation per epoch; batches reuse it
            used = self.steps_per_epoch * self.global_batch_size
            self._perm = np.random.default_rng([self.seed, _PAIRING, epoch]).permutation(used)
            self._perm_epoch = epoch
        return self._perm

    def example_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Global example indices (infrared, visible) of this process's rows at global ``step``.

        Infrared row j of the global batch is example ``step·G + j``; its visible partner is the
        same epoch's example at the pairing permutation of j's position within the epoch.
        """
        G = self.global_batch_size
        a = np.arange(step * G, (step + 1) * G, dtype=np.int64)[self._rows]
        used = self.steps_per_epoch * G  # whole steps only; leftover examples are never drawn
        epoch = step // self.steps_per_epoch
        b = epoch * used + self._pairing(epoch)[a - epoch * used]
        return a, b

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global ``step``, without moving the stream."""
        a, b = self.example_indices(step)
        S, T = self.frame_size, self.clip_length
        return {
            "A": infrared_clips(self.seed, a, S, T),
            "B": visible_clips(self.seed, b, S, T),
        }

    def next_batch(self) -> dict[str, np.ndarray]:
        batch = self.batch_at(self._step)
        self._step += 1
        return batch

    def get_state(self) -> dict:
        return {
            "kind": "demo",
            "step": self._step,
            "seed": self.seed,
            "frame_size": self.frame_size,
            "clip_length": self.clip_length,
            # The step -> examples mapping depends on these too, so a state only resumes a
            # source that would have produced the same stream.
            "global_batch_size": self.global_batch_size,
            "epoch_size": self.epoch_size,
        }

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"demo source state must be a dict, got {type(state).__name__}")
        if state.get("kind") != "demo":
            raise ValueError(
                f"state kind is {state.get('kind')!r}, not 'demo': it belongs to another source"
            )
        mine = self.get_state()
        for field in ("seed", "frame_size", "clip_length", "global_batch_size", "epoch_size"):
            if field not in state:
                raise ValueError(f"demo source state lacks field {field!r}")
            if state[field] != mine[field]:
                raise ValueError(
                    f"demo source state has {field}={state[field]!r} but this source has "
                    f"{field}={mine[field]!r}: the state belongs to a different data set"
                )
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise ValueError(f"demo source state step must be an integer >= 0, got {step!r}")
        self._step = int(step)
