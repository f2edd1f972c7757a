"""The device mesh and the shardings of the training iteration.

Data parallel: the batch is split over a ``data`` mesh axis that spans every device of every
process; parameters, optimizer states, the frozen ViT and the RNG key are replicated. XLA inserts
the gradient all-reduces. The iteration is jitted once with these explicit shardings and the
train state donated, so its buffers are updated in place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D ``data`` mesh over the first ``num_devices`` devices (default: all, all hosts)."""
    available = jax.device_count()
    n = available if num_devices is None else num_devices
    if not 1 <= n <= available:
        raise ValueError(f"mesh needs 1..{available} devices, asked for {num_devices}")
    return mesh_over(jax.devices()[:n])


def mesh_over(devices: Sequence[jax.Device]) -> Mesh:
    """A 1-D ``data`` mesh over ``devices``: this job's devices (the trainer), or a TPU
    topology's compile-only devices (``python -m cptrans_jax.plan``), so both get one layout."""
    # Auto axes: XLA propagates the batch sharding through the step (reshapes of the batch
    # axis, einsums over it) instead of asking for an explicit sharding at every op.
    return jax.make_mesh(
        (len(devices),),
        (DATA_AXIS,),
        devices=list(devices),
        axis_types=(jax.sharding.AxisType.Auto,),
    )


def local_data_mesh() -> Mesh:
    """A 1-D ``data`` mesh over this process's devices only: for inference (translate,
    evaluate), where every process works through its own inputs."""
    devices = jax.local_devices()
    return jax.make_mesh(
        (len(devices),), (DATA_AXIS,), devices=devices, axis_types=(jax.sharding.AxisType.Auto,)
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, jax.P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; every other axis whole."""
    return NamedSharding(mesh, jax.P(DATA_AXIS))


def check_global_batch(global_batch: int, mesh: Mesh) -> None:
    """A global batch must split evenly over the data axis; say so before anything compiles."""
    n = mesh.shape[DATA_AXIS]
    if global_batch < 1 or global_batch % n:
        raise ValueError(
            f"global batch size {global_batch} does not divide over the {n} devices of the "
            f"'{DATA_AXIS}' mesh axis; use a multiple of {n}"
        )


def place_replicated(tree: Any, mesh: Mesh) -> Any:
    """Puts a pytree (train state, ViT params, key) on every device of ``mesh``.

    Every process must pass the same values. Works across processes (``jax.device_put`` cannot
    target another host's devices): each process fills its own devices' copies. Arguments must
    carry the jitted step's shardings up front: a fresh, uncommitted state would otherwise make
    the second call compile the step again for the committed output state.
    """
    sharding = replicated(mesh)

    def put(x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(
                put(jax.random.key_data(x)), impl=jax.random.key_impl(x)
            )
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def jit_iteration(iteration: Callable, mesh: Mesh) -> Callable[..., tuple[Any, dict]]:
    """``jax.jit`` of ``iteration(state, batch, vit_params, rng)`` with explicit shardings."""
    rep, data = replicated(mesh), batch_sharding(mesh)
    return jax.jit(
        iteration,
        in_shardings=(rep, data, rep, rep),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
    )
