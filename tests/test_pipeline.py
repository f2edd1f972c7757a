"""The Grain clip pipeline (issue 5): clips, host shards, determinism, resume, errors."""

import collections
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from data_fixtures import FRAME_VIDEOS, frame_value, frames_tree, identity, pair_tree
from PIL import Image

from cptrans_jax.data import builders
from cptrans_jax.data.pipeline import DataNotFoundError, TFDSClipSource, _ResizeCrop
from cptrans_jax.data.source import ClipSource

tfds.disable_progress_bar()
QUIET = {"print_fn": lambda *_: None}


@pytest.fixture(scope="module")
def frames_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    builders.build(
        "infraredcity_adverse", "rain", "frames", frames_tree(root / "m"), root / "d", **QUIET
    )
    return root / "d"


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    builders.build(
        "infraredcity_lite", "monitor", "packed", pair_tree(root / "m"), root / "d", **QUIET
    )
    return root / "d"


def source(data_dir, **kw):
    args = dict(
        dataset="infraredcity_adverse",
        scene="rain",
        layout="frames",
        data_dir=data_dir,
        clip_length=3,
        frame_size=8,
        load_size=8,
        global_batch_size=4,
        seed=0,
        read_threads=2,
        **QUIET,
    )
    args.update(kw)
    return TFDSClipSource(**args)


def ids(batch):
    """Per row, the identities of its frames."""
    return [[identity(f) for f in clip] for clip in batch]


def test_batches_are_unpaired_clips_of_adjacent_frames(frames_data):
    s = source(frames_data)
    assert isinstance(s, ClipSource)
    infrared = {
        frame_value(0, v, f) for v, n in enumerate(FRAME_VIDEOS["trainA"]) for f in range(n)
    }
    n_clips = sum(n - 2 for n in FRAME_VIDEOS["trainA"])  # 2 + 10 clips of 3 frames
    assert s.steps_per_epoch == n_clips // 4
    seen = []
    for _ in range(s.steps_per_epoch):
        batch = s.next_batch()
        assert set(batch) == {"A", "B"}
        for key in "AB":
            assert batch[key].shape == (4, 3, 8, 8, 3) and batch[key].dtype == np.float32
            assert batch[key].min() >= -1.0 and batch[key].max() <= 1.0
        for clip in ids(batch["A"]):
            assert clip[1] == clip[0] + 1 and clip[2] == clip[0] + 2 and clip[0] in infrared
            seen.append(clip[0])
        # Infrared is gray → equal channels; visible keeps its colour.
        np.testing.assert_array_equal(batch["A"][..., 0], batch["A"][..., 2])
        np.testing.assert_allclose(batch["B"][..., 1], 128 / 127.5 - 1, atol=1e-6)
        assert ids(batch["B"]) == [[100 + f for f in range(3)]] * 4  # the one 3-frame video
    # One epoch of the infrared stream visits every clip once.
    assert sorted(seen) == sorted(
        frame_value(0, v, f) for v, n in enumerate(FRAME_VIDEOS["trainA"]) for f in range(n - 2)
    )


def test_deterministic_for_a_seed(frames_data):
    a, b, c = source(frames_data), source(frames_data), source(frames_data, seed=1)
    first = [a.next_batch()["A"] for _ in range(3)]
    for x in first:
        np.testing.assert_array_equal(x, b.next_batch()["A"])
    assert [ids(x) for x in first] != [ids(c.next_batch()["A"]) for _ in range(3)]


def test_host_shards_are_disjoint_and_cover_the_batch(pair_data):
    kw = dict(dataset="infraredcity_lite", scene="monitor", layout="packed", clip_length=2)
    whole = source(pair_data, **kw)
    hosts = [source(pair_data, **kw, process_index=p, process_count=2) for p in range(2)]
    assert [h.local_batch_size for h in hosts] == [2, 2]
    seen = collections.Counter()
    for _ in range(5):
        full = whole.next_batch()
        parts = [h.next_batch() for h in hosts]
        for key in "AB":
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])
        seen.update(clip[0] for p in parts for clip in ids(p["A"]))
    # 5 steps × 4 rows = 4 passes over the 5 infrared pair files: together the hosts read every
    # clip exactly 4 times (each pass a fresh permutation).
    assert seen == {frame_value(0, i, i): 4 for i in range(5)}


def test_resume_at_the_same_element(frames_data):
    s = source(frames_data, load_size=12)  # random crops too
    for _ in range(3):
        s.next_batch()
    state = json.loads(json.dumps(s.get_state()))
    assert state["step"] == 3
    expected = [s.next_batch() for _ in range(2)]
    resumed = source(frames_data, load_size=12)
    resumed.set_state(state)
    for want in expected:
        got = resumed.next_batch()
        for key in "AB":
            np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(ValueError, match="data state field 'seed' is 5 in the checkpoint"):
        resumed.set_state({**state, "seed": 5})


def test_resize_and_crop_shared_by_the_frames_of_a_clip():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    clip = np.stack([image, image, image])
    transform = _ResizeCrop(load=16, size=10)
    resized = np.asarray(Image.fromarray(image).resize((16, 16), Image.BICUBIC), np.float32)
    offsets = set()
    for seed in range(6):
        out = transform(clip, np.random.default_rng(seed))
        assert out.shape == (3, 10, 10, 3)
        np.testing.assert_array_equal(out[0], out[1])  # one crop for the whole clip
        np.testing.assert_array_equal(out[0], out[2])
        # It is a window of the bicubic-resized frame, scaled to [-1, 1].
        matches = [
            (t, l)
            for t in range(7)
            for l in range(7)
            if np.array_equal(out[0], resized[t : t + 10, l : l + 10] / 127.5 - 1.0)
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1  # crops differ between clips


def test_errors(tmp_path, pair_data, frames_data):
    with pytest.raises(DataNotFoundError, match=r"not built in data dir .*data_prep/build\.py"):
        source(tmp_path / "empty")
    # Built with --layout frames, trained without layout=frames: the build that exists is named,
    # with both ways to select it, instead of advice to build the other layout.
    with pytest.raises(DataNotFoundError) as e:
        source(frames_data, layout="packed")
    assert str(e.value) == (
        f"infraredcity_adverse/rain is not built in data dir {frames_data!r} (looked for "
        f"{frames_data}/infraredcity_adverse/rain/1.0.0), but infraredcity_adverse/rain_frames "
        "is: the scene was built with --layout frames. Train on it with layout=frames in the "
        "config argument (e.g. --config configs/infraredcity_adverse.py:scene=rain,layout=frames)"
        " or with --config.data.layout=frames"
    )
    assert "data_prep/build.py" not in str(e.value)
    with pytest.raises(ValueError, match="no infrared clips of 3 adjacent frames .*packed file"):
        source(pair_data, dataset="infraredcity_lite", scene="monitor", layout="packed")
