"""Checkpointer: retention, bit-exact restores onto a mesh, clear errors, kill-safety."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cptrans_jax.checkpoints import Checkpointer, abstract_like
from cptrans_jax.steps import TrainState


def tiny_state(seed: int, size: int = 6) -> TrainState:
    """A small TrainState whose every leaf depends on ``seed`` (Adam moments included)."""
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    g = {
        "conv": {"kernel": jax.random.normal(k1, (size, 3))},
        "bias": jnp.full((3,), seed, jnp.float32),
    }
    d = {"linear": jax.random.normal(k2, (4, 2))}
    tx = optax.adam(1e-3)
    g_opt, d_opt = tx.init(g), tx.init(d)
    # Non-zero moments and count, so a restore that dropped the optimizer state would show.
    g_opt = jax.tree.map(lambda x: x + seed, g_opt)
    d_opt = jax.tree.map(lambda x: x + jax.random.normal(k3, x.shape).astype(x.dtype), d_opt)
    return TrainState(
        step=jnp.asarray(seed, jnp.int32),
        g_params=g,
        d_params=d,
        g_opt_state=g_opt,
        d_opt_state=d_opt,
    )


@pytest.fixture(scope="module")
def sharding():
    return jax.sharding.NamedSharding(jax.make_mesh((1,), ("data",)), jax.P())


def assert_same_state(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit for bit


def test_keeps_last_two_and_restores_latest_and_specific(tmp_path, sharding):
    directory = tmp_path / "checkpoints"
    with Checkpointer(directory, save_every=2, keep=2) as ckpt:
        assert not ckpt.save(3, tiny_state(3), {"pos": 3})  # not a multiple of save_every
        for step in (2, 4, 6):
            assert ckpt.should_save(step)
            assert ckpt.save(step, tiny_state(step), {"pos": step * 10, "config_hash": "abc"})
        ckpt.wait()
        assert ckpt.all_steps() == [4, 6]
        assert ckpt.latest_step() == 6
        # Forced save of a step already on disk (a run ending on a save step) is a no-op.
        assert not ckpt.save(6, tiny_state(6), {"pos": 60}, force=True)
    assert sorted(p.name for p in directory.iterdir() if p.name.isdigit()) == ["4", "6"]
    assert sorted(p.name for p in (directory / "6").iterdir() if not p.name.startswith("_")) == [
        "commit_success.txt",
        "data",
        "state",
    ]

    # A fresh Checkpointer (as after a restart) sees the same steps.
    ckpt = Checkpointer(directory, save_every=2, keep=2)
    abstract = abstract_like(tiny_state(0), sharding)
    state, data = ckpt.restore(abstract)
    assert_same_state(state, tiny_state(6))
    assert data == {"pos": 60, "config_hash": "abc"}
    assert isinstance(state, TrainState)
    for leaf in jax.tree.leaves(state):
        assert isinstance(leaf, jax.Array)
        assert leaf.sharding == sharding

    state4, data4 = ckpt.restore(abstract, step=4)
    assert_same_state(state4, tiny_state(4))
    assert data4["pos"] == 40
    with pytest.raises(FileNotFoundError, match=r"step 2 .*available steps: \[4, 6\]"):
        ckpt.restore(abstract, step=2)
    ckpt.close()


def test_forced_save_off_schedule(tmp_path, sharding):
    with Checkpointer(tmp_path, save_every=100, keep=3, async_save=False) as ckpt:
        assert not ckpt.save(7, tiny_state(7), {})
        assert ckpt.save(7, tiny_state(7), {"final": True}, force=True)
        state, data = ckpt.restore(abstract_like(tiny_state(0), sharding))
    assert_same_state(state, tiny_state(7))
    assert data == {"final": True}


def test_empty_directory(tmp_path, sharding):
    directory = tmp_path / "nothing here"
    ckpt = Checkpointer(directory, save_every=1, keep=1)
    assert ckpt.latest_step() is None
    with pytest.raises(FileNotFoundError, match="no checkpoint") as info:
        ckpt.restore(abstract_like(tiny_state(0), sharding))
    assert str(directory) in str(info.value)
    ckpt.close()


_MISMATCHES = {
    # change: (what the expected g_params become, lines the error must contain)
    "extra": (
        lambda g: {**g, "extra": jnp.zeros((5,))},
        [r"1 missing from the checkpoint:", r"^ +g_params/extra$"],
    ),
    "missing": (
        lambda g: {"conv": g["conv"]},
        [r"1 in the checkpoint but not expected:", r"^ +g_params/bias$"],
    ),
    "shape": (  # a different model size
        lambda g: {**g, "conv": {"kernel": jnp.zeros((8, 3))}},
        [
            r"1 shape/dtype differs:",
            r"g_params/conv/kernel: checkpoint \(6, 3\) float32, expected \(8, 3\) float32",
        ],
    ),
    "dtype": (
        lambda g: {**g, "bias": g["bias"].astype(jnp.bfloat16)},
        [r"g_params/bias: checkpoint \(3,\) float32, expected \(3,\) bfloat16"],
    ),
}


@pytest.mark.parametrize("change", sorted(_MISMATCHES))
def test_mismatched_tree_is_named(tmp_path, sharding, change):
    modify, patterns = _MISMATCHES[change]
    with Checkpointer(tmp_path, save_every=1, keep=1, async_save=False) as ckpt:
        ckpt.save(1, tiny_state(1), {})
        base = tiny_state(0)
        abstract = abstract_like(base.replace(g_params=modify(dict(base.g_params))), sharding)
        with pytest.raises(ValueError, match="does not match the expected train state") as info:
            ckpt.restore(abstract)
    lines = str(info.value).splitlines()
    for pattern in patterns:
        assert any(re.search(pattern, line) for line in lines), (pattern, lines)


def test_abstract_without_sharding_is_refused(tmp_path):
    with Checkpointer(tmp_path, save_every=1, keep=1, async_save=False) as ckpt:
        ckpt.save(1, tiny_state(1), {})
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tiny_state(0))
        with pytest.raises(ValueError, match="without a sharding"):
            ckpt.restore(abstract)


def test_async_save_survives_donation(tmp_path, sharding):
    """save() returns before the write; the caller may then donate (delete) the state."""
    state = jax.device_put(tiny_state(5, size=64), sharding)
    expected = jax.tree.map(np.asarray, state)
    with Checkpointer(tmp_path, save_every=5, keep=2, async_save=True) as ckpt:
        assert ckpt.save(5, state, {"pos": 5})
        for leaf in jax.tree.leaves(state):
            leaf.delete()  # what donating the state to the next jitted step does
        ckpt.wait()
        assert ckpt.all_steps() == [5]
        restored, data = ckpt.restore(abstract_like(tiny_state(0, size=64), sharding))
    assert_same_state(restored, expected)
    assert data == {"pos": 5}


def test_data_state_must_be_json(tmp_path):
    with (
        Checkpointer(tmp_path, save_every=1, keep=1) as ckpt,
        pytest.raises(TypeError, match="not JSON-serialisable"),
    ):
        ckpt.save(1, tiny_state(1), {"array": np.zeros(2)})


_KILLED_MID_SAVE = """
import os, signal, sys
sys.path.insert(0, {tests_dir!r})
from orbax.checkpoint._src.path import atomicity
from cptrans_jax.checkpoints import Checkpointer
from test_checkpoints import tiny_state

ckpt = Checkpointer(sys.argv[1], save_every=1, keep=5, async_save=True)
assert ckpt.save(1, tiny_state(1), {{"pos": 1}})
ckpt.wait()

# Kill the process at the last moment of saving step 2: every file is written to the temporary
# directory and only the rename that commits it is left. Deterministic: the kill happens in the
# commit itself, so the save cannot finish first.
original = atomicity.AtomicRenameTemporaryPath.finalize

async def killed_finalize(self):
    if self.get_final().name == "2":
        print("killing in commit of", self.get(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    return await original(self)

atomicity.AtomicRenameTemporaryPath.finalize = killed_finalize
ckpt.save(2, tiny_state(2, size=250_000), {{"pos": 2}})  # ~3 MB per copy of the params
ckpt.wait()
print("save of step 2 completed", flush=True)
"""


def test_killed_mid_save_keeps_previous_checkpoint(tmp_path, sharding):
    directory = tmp_path / "checkpoints"
    script = tmp_path / "killed_mid_save.py"
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    script.write_text(textwrap.dedent(_KILLED_MID_SAVE.format(tests_dir=tests_dir)))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(script), str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert "killing in commit of" in proc.stdout
    assert "completed" not in proc.stdout

    # The interrupted save left its temporary directory, with step 2's arrays in it, but no step.
    leftovers = [p for p in directory.iterdir() if p.name.startswith("2.")]
    assert len(leftovers) == 1 and "tmp" in leftovers[0].name, list(directory.iterdir())
    written = sum(f.stat().st_size for f in leftovers[0].rglob("*") if f.is_file())
    assert written > 2_000_000  # the large state really was written before the kill
    assert not (directory / "2").exists()

    ckpt = Checkpointer(directory, save_every=1, keep=5)
    assert ckpt.latest_step() == 1
    assert ckpt.all_steps() == [1]
    state, data = ckpt.restore(abstract_like(tiny_state(0), sharding))
    assert_same_state(state, tiny_state(1))
    assert data == {"pos": 1}

    # Training goes on: step 2 saves again, and the leftover temporary directory is removed.
    assert ckpt.save(2, tiny_state(2), {"pos": 2})
    ckpt.wait()
    assert ckpt.all_steps() == [1, 2]
    assert not leftovers[0].exists()
    ckpt.close()


class _ScriptedManager:
    """Stands in for Orbax's manager with a save in flight that fails after ``fail_after``
    queries: every call to ``is_saving_in_progress``/``check_for_errors`` advances the clock, so
    the failure can land between any two of the checkpointer's own calls."""

    def __init__(self, fail_after: int):
        self.fail_after = fail_after
        self.clock = 0

    def _tick(self) -> bool:
        failed = self.clock >= self.fail_after
        self.clock += 1
        return failed

    def is_saving_in_progress(self) -> bool:
        return not self._tick()

    def check_for_errors(self) -> None:
        if self._tick():
            raise OSError(27, "File too large")

    def wait_until_finished(self) -> None:
        self.clock = max(self.clock, self.fail_after)

    def reload(self) -> None:
        pass

    def all_steps(self) -> list[int]:
        return [2]


@pytest.mark.parametrize("fail_after", range(5))
def test_a_failed_save_is_reported_with_its_step_whenever_it_fails(tmp_path, fail_after):
    """A background save can fail between any two of the trainer's polls (CI once saw
    "saving a checkpoint … failed": the failure landed between the error check and the
    in-progress check, and the step was forgotten). Wherever it lands, the error names step 4."""
    from cptrans_jax.checkpoints import CheckpointSaveError

    ckpt = Checkpointer(tmp_path / "ckpt", save_every=2, keep=2)
    ckpt._manager.close()
    ckpt._manager = _ScriptedManager(fail_after)
    ckpt._saving = 4
    with pytest.raises(CheckpointSaveError) as info:
        for _ in range(3):
            ckpt.poll()
        ckpt.wait()
    assert "saving checkpoint 4 to " in str(info.value), str(info.value)
    assert "the checkpoints kept are [2]" in str(info.value)
