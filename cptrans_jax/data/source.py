"""The one input interface the trainer reads: a host-local stream of unpaired clip batches.

Every process of a multi-host run owns a fixed, disjoint block of rows of each global batch
(``host_slice``); a source yields only that block, so no process ever loads another's data and
the blocks together are exactly the global batch. A source's position is a small JSON-serialisable
dict that is checkpointed with the train state, so a resumed run sees exactly the batches an
uninterrupted one would have seen.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ClipSource(Protocol):
    """Host-local stream of unpaired training batches.

    ``next_batch()`` returns ``{"A": infrared, "B": visible}``, each float32 of shape
    ``(local_batch_size, T, H, W, 3)`` with values in [-1, 1]; infrared clips are gray replicated
    to 3 channels. Row r of "A" and row r of "B" are unrelated scenes (unpaired translation).
    """

    local_batch_size: int
    """Rows this process yields per step."""

    steps_per_epoch: int
    """Global iterations per epoch (drives the learning-rate schedule)."""

    def next_batch(self) -> dict[str, np.ndarray]:
        """The next batch of this process's rows; advances the stream by one global step."""
        ...

    def get_state(self) -> dict:
        """JSON-serialisable position in the stream (taken before the next ``next_batch``)."""
        ...

    def set_state(self, state: dict) -> None:
        """Resume exactly at ``state``.

        Raises ValueError, naming the offending field, when ``state`` does not belong to this
        source (another kind of source, another seed or configuration).
        """
        ...


def host_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    """The rows of a global batch that process ``process_index`` of ``process_count`` owns.

    Contiguous equal blocks in process order, matching how a batch sharded over a ``data`` mesh
    axis spanning all processes' devices is laid out.
    """
    for name, value in (("global_batch", global_batch), ("process_count", process_count)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if (
        isinstance(process_index, bool)
        or not isinstance(process_index, int | np.integer)
        or not 0 <= process_index < process_count
    ):
        raise ValueError(
            f"process_index must be an integer in [0, {process_count}), got {process_index!r}"
        )
    if global_batch % process_count:
        raise ValueError(
            f"global_batch {global_batch} is not divisible by process_count {process_count}: "
            "every process must own the same number of rows"
        )
    local = global_batch // process_count
    return slice(int(process_index) * local, (int(process_index) + 1) * local)
