"""The built-in demo data and the input interface the trainer reads (issue 4)."""

import json

import numpy as np
import pytest

from cptrans_jax.data.demo import DemoSource
from cptrans_jax.data.source import host_slice


def source(**kw):
    args = dict(frame_size=32, clip_length=2, global_batch_size=4, seed=0, epoch_size=16)
    return DemoSource(**{**args, **kw})


def test_shapes_range_and_gray_infrared():
    b = source().next_batch()
    assert set(b) == {"A", "B"}
    for v in b.values():
        assert v.shape == (4, 2, 32, 32, 3) and v.dtype == np.float32
        assert v.min() >= -1 and v.max() <= 1 and v.std() > 0.05
    a = b["A"]
    np.testing.assert_array_equal(a[..., 0], a[..., 1])  # gray replicated to 3 channels
    np.testing.assert_array_equal(a[..., 0], a[..., 2])
    assert np.abs(b["B"][..., 0] - b["B"][..., 2]).mean() > 0.01  # visible is coloured
    assert source().steps_per_epoch == 4


def test_deterministic_and_resumable():
    s1, s2 = source(), source()
    for _ in range(3):
        x, y = s1.next_batch(), s2.next_batch()
        for k in "AB":
            np.testing.assert_array_equal(x[k], y[k])
    state = json.loads(json.dumps(s1.get_state()))  # what a checkpoint stores
    expected = s1.next_batch()
    resumed = source()
    resumed.set_state(state)
    got = resumed.next_batch()
    for k in "AB":
        np.testing.assert_array_equal(got[k], expected[k])
    assert not np.array_equal(source(seed=1).next_batch()["A"], source().next_batch()["A"])


def test_clips_are_consecutive_frames_of_moving_objects():
    a = source(clip_length=2, global_batch_size=8).next_batch()["A"]
    within = np.abs(a[:, 0] - a[:, 1]).mean()
    across = np.abs(a[:-1, 0] - a[1:, 0]).mean()
    assert 0 < within < 0.5 * across


def test_process_shards_are_disjoint_and_cover_the_global_batch():
    whole = source().next_batch()
    parts = [source(process_index=i, process_count=2).next_batch() for i in range(2)]
    for k in "AB":
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])
    assert host_slice(8, 1, 4) == slice(2, 4)
    with pytest.raises(ValueError, match="3"):
        host_slice(4, 0, 3)


def test_unpaired_pairing_changes_between_epochs():
    s = source()
    first = [s.example_indices(step) for step in range(s.steps_per_epoch)]
    second = [s.example_indices(step + s.steps_per_epoch) for step in range(s.steps_per_epoch)]
    pairs1 = {(int(a), int(b)) for ia, ib in first for a, b in zip(ia, ib, strict=True)}
    pairs2 = {(int(a) % 16, int(b) % 16) for ia, ib in second for a, b in zip(ia, ib, strict=True)}
    assert pairs1 != pairs2


def test_bad_arguments_and_foreign_state():
    with pytest.raises(ValueError, match="frame_size"):
        source(frame_size=30)
    with pytest.raises(ValueError, match="clip_length"):
        source(clip_length=0)
    with pytest.raises(ValueError):
        source(global_batch_size=4, process_count=3)
    state = source(seed=1).get_state()
    with pytest.raises(ValueError, match="seed"):
        source().set_state(state)
