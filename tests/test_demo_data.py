"""The procedural demo data set and the ClipSource interface (cptrans_jax/data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cptrans_jax.data.demo import DemoSource, infrared_clips, visible_clips
from cptrans_jax.data.source import ClipSource, host_slice

# Small enough that the whole file runs in about a second.
SMALL = {"frame_size": 32, "clip_length": 2, "global_batch_size": 4, "epoch_size": 16}


def _source(**overrides) -> DemoSource:
    return DemoSource(**{**SMALL, "seed": 0, **overrides})


def test_implements_clip_source():
    src = _source()
    assert isinstance(src, ClipSource)
    assert src.local_batch_size == 4
    assert src.steps_per_epoch == 4
    json.dumps(src.get_state())  # checkpointed as JSON


@pytest.mark.parametrize("frame_size,clip_length", [(32, 1), (32, 2), (48, 3)])
def test_shapes_dtype_range(frame_size, clip_length):
    src = _source(frame_size=frame_size, clip_length=clip_length, global_batch_size=2)
    batch = src.next_batch()
    assert set(batch) == {"A", "B"}
    for x in batch.values():
        assert x.shape == (2, clip_length, frame_size, frame_size, 3)
        assert x.dtype == np.float32
        assert x.min() >= -1.0 and x.max() <= 1.0
        assert x.std() > 0.1  # real content, not a constant frame


def test_infrared_is_gray_and_visible_is_coloured():
    batch = _source().next_batch()
    a, b = batch["A"], batch["B"]
    np.testing.assert_array_equal(a[..., 0], a[..., 1])
    np.testing.assert_array_equal(a[..., 0], a[..., 2])
    # Daytime scenes: a blue sky on top (B > R) and a real spread of hues.
    top = b[:, :, : b.shape[2] // 8]
    assert (top[..., 2] - top[..., 0]).mean() > 0.2
    assert np.abs(b[..., 0] - b[..., 1]).mean() > 0.05
    # Night infrared: mostly dark (a cool background) with a few warm, bright objects.
    assert np.median(a) < -0.4
    assert (a > 0.3).mean() > 0.005


def test_deterministic_in_seed():
    x, y, z = _source(seed=3), _source(seed=3), _source(seed=4)
    for _ in range(3):
        bx, by, bz = x.next_batch(), y.next_batch(), z.next_batch()
        for k in ("A", "B"):
            np.testing.assert_array_equal(bx[k], by[k])
            assert np.abs(bx[k] - bz[k]).mean() > 0.05


def test_example_is_a_pure_function_of_seed_domain_index():
    # The same example rendered alone or inside another batch is bit-identical.
    together = infrared_clips(7, np.array([5, 9, 2]), 32, 2)
    np.testing.assert_array_equal(together[1:2], infrared_clips(7, np.array([9]), 32, 2))
    together = visible_clips(7, np.array([5, 9, 2]), 32, 2)
    np.testing.assert_array_equal(together[2:3], visible_clips(7, np.array([2]), 32, 2))


def test_resume_from_state_reproduces_the_stream():
    src = _source(seed=11)
    for _ in range(5):  # across an epoch boundary (4 steps per epoch)
        src.next_batch()
    state = json.loads(json.dumps(src.get_state()))
    assert state["step"] == 5
    expected = [src.next_batch() for _ in range(4)]

    resumed = _source(seed=11)
    resumed.set_state(state)
    for want in expected:
        got = resumed.next_batch()
        for k in ("A", "B"):
            np.testing.assert_array_equal(got[k], want[k])
    assert resumed.get_state() == src.get_state()


def test_processes_own_disjoint_halves_of_the_global_batch():
    whole = _source(global_batch_size=4)
    halves = [_source(global_batch_size=4, process_index=i, process_count=2) for i in range(2)]
    assert halves[0].local_batch_size == 2
    for step in range(5):
        g = whole.next_batch()
        parts = [h.next_batch() for h in halves]
        a0, _ = halves[0].example_indices(step)
        a1, _ = halves[1].example_indices(step)
        assert set(a0.tolist()).isdisjoint(a1.tolist())
        for k in ("A", "B"):
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), g[k])


def test_host_slice():
    assert host_slice(8, 0, 1) == slice(0, 8)
    assert [host_slice(8, i, 4) for i in range(4)] == [slice(2 * i, 2 * i + 2) for i in range(4)]
    with pytest.raises(ValueError, match=r"global_batch 6 .*process_count 4"):
        host_slice(6, 0, 4)
    with pytest.raises(ValueError, match="process_index"):
        host_slice(8, 4, 4)
    with pytest.raises(ValueError, match="process_count"):
        host_slice(8, 0, 0)


def _mean_abs(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.abs(x - y).mean())


@pytest.mark.parametrize("domain", ["A", "B"])
def test_objects_move_between_consecutive_frames(domain):
    clips = _source(frame_size=64, global_batch_size=8, epoch_size=8).next_batch()[domain]
    # Frames t and t+1 of one clip: same scene, objects shifted a few pixels.
    temporal = np.mean([_mean_abs(c[0], c[1]) for c in clips])
    # Frame 0 of two different clips: different scenes.
    across = np.mean([_mean_abs(clips[i, 0], clips[j, 0]) for i in range(8) for j in range(i)])
    assert 0 < temporal < 0.5 * across
    # Not just sensor noise (σ ≤ 0.03): somewhere an object edge moved, a large local change.
    assert min(np.abs(c[0] - c[1]).max() for c in clips) > 0.4


def test_pairing_is_an_epoch_permutation_not_a_function_of_the_a_index():
    src = _source()  # 4 steps of 4 examples per epoch
    a0, b0 = zip(*(src.example_indices(s) for s in range(4)), strict=True)
    a1, b1 = zip(*(src.example_indices(s) for s in range(4, 8)), strict=True)
    a0, b0, a1, b1 = (np.concatenate(x) for x in (a0, b0, a1, b1))
    np.testing.assert_array_equal(a0, np.arange(16))
    # Every visible example of the epoch is used exactly once, in a shuffled order.
    np.testing.assert_array_equal(np.sort(b0), a0)
    assert not np.array_equal(b0, a0)
    # The next epoch pairs the same A positions with a different B order.
    np.testing.assert_array_equal(np.sort(b1), a1)
    assert not np.array_equal(b1 - 16, b0)
    # The batch really holds those visible examples.
    batch = src.batch_at(1)
    np.testing.assert_array_equal(batch["B"], visible_clips(0, b0[4:8], 32, 2))
    np.testing.assert_array_equal(batch["A"], infrared_clips(0, a0[4:8], 32, 2))


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"frame_size": 30}, "frame_size"),
        ({"frame_size": 12}, "frame_size"),
        ({"clip_length": 0}, "clip_length"),
        ({"global_batch_size": 0}, "global_batch_size"),
        ({"global_batch_size": 3, "process_count": 2}, "process_count"),
        ({"process_count": 2, "process_index": 2}, "process_index"),
        ({"seed": -1}, "seed"),
        ({"epoch_size": 2}, "epoch_size"),
    ],
)
def test_bad_arguments_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        _source(**overrides)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"kind": "tfds"}, "kind"),
        ({"seed": 1}, "seed"),
        ({"frame_size": 64}, "frame_size"),
        ({"clip_length": 3}, "clip_length"),
        ({"global_batch_size": 8}, "global_batch_size"),
        ({"step": -1}, "step"),
        ({"step": "3"}, "step"),
    ],
)
def test_foreign_state_is_rejected(change, field):
    src = _source()
    state = {**src.get_state(), **change}
    with pytest.raises(ValueError, match=field):
        src.set_state(state)
    assert src.get_state()["step"] == 0  # a rejected state leaves the stream where it was
    missing = src.get_state()
    del missing["seed"]
    with pytest.raises(ValueError, match="seed"):
        src.set_state(missing)
