"""The Grain input pipeline over a built TFDS scene: unpaired clips of adjacent frames.

Each domain is an endless stream of clips of ``T`` consecutive frames of one video (for the
authors' packed files, the first ``T`` frames of each file, so one clip per file as their loaders
read them). The streams are shuffled independently and reshuffled every epoch
(``grain.MapDataset.shuffle(seed).repeat()``), so row r of "A" and row r of "B" are unrelated.
Preprocessing (SPEC §5): every frame bicubic-resized to ``load_size``², one random
``frame_size``² crop shared by the frames of a clip, [0, 255] → [-1, 1].

Global element ``g`` of a stream (its clip and its crop) is a pure function of (seed, domain, g):
global batch ``k`` is elements ``k·B … k·B + B − 1``, and process ``p`` of ``P`` reads only its
rows ``k·B + p·B/P …`` — shards are disjoint, cover the batch, and do not depend on the number
of processes or threads. The position is just the global step, so resuming rebuilds the stream
from that step (even with another process count).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import grain
import numpy as np
from PIL import Image

from cptrans_jax.data.builders import FILE_FORMAT, config_name, frame_table, make_builder
from cptrans_jax.data.layouts import LAYOUTS
from cptrans_jax.data.source import host_slice

_HUGE = 2**62  # "endless": the length of the host's index stream


def clip_table(table: dict[str, np.ndarray], domain: int, clip_length: int, packed: bool):
    """Record indices of every clip of ``clip_length`` adjacent frames in ``domain``.

    Returns int64 ``(n_clips, clip_length)``, ordered by (video, first frame). A clip never spans
    two videos or a gap (a frame skipped as corrupt); for packed files it starts at frame 0.
    """
    (records,) = np.nonzero(table["domain"] == domain)
    order = np.lexsort((table["frame"][records], table["video"][records]))
    records = records[order]
    video, frame = table["video"][records], table["frame"][records]
    n = len(records) - clip_length + 1
    if n <= 0:
        return np.zeros((0, clip_length), np.int64)
    ok = np.ones(n, bool)
    for j in range(1, clip_length):
        ok &= (video[j : j + n] == video[:n]) & (frame[j : j + n] == frame[:n] + j)
    if packed:
        ok &= frame[:n] == 0
    starts = np.nonzero(ok)[0]
    return records[starts[:, None] + np.arange(clip_length)].astype(np.int64)


class _ClipReader(Sequence):
    """Random access to clips: item i is the uint8 ``(T, H, W, 3)`` frames of clip i."""

    def __init__(self, records, clips: np.ndarray) -> None:
        self._records = records
        self._clips = clips

    def __len__(self) -> int:
        return len(self._clips)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.stack([self._records[int(r)]["image"] for r in self._clips[i]])


class _ResizeCrop:
    """Bicubic resize to ``load``², one random ``size``² crop for the whole clip, to [-1, 1]."""

    def __init__(self, load: int, size: int) -> None:
        self.load, self.size = load, size

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # PIL's bicubic (antialiased) is what the authors' torchvision Resize runs on PIL images.
        frames = [
            np.asarray(Image.fromarray(f).resize((self.load, self.load), Image.BICUBIC))
            for f in clip
        ]
        top, left = rng.integers(0, self.load - self.size + 1, size=2)
        out = np.stack(frames)[:, top : top + self.size, left : left + self.size]
        return out.astype(np.float32) / 127.5 - 1.0


class _HostRows(Sequence):
    """The global element indices process ``p`` reads, in order: its rows of batch 0, 1, …"""

    def __init__(self, local: int, global_batch: int, first_row: int) -> None:
        self.local, self.global_batch, self.first_row = local, global_batch, first_row

    def __len__(self) -> int:
        return _HUGE

    def __getitem__(self, m: int) -> int:
        step, row = divmod(int(m), self.local)
        return step * self.global_batch + self.first_row + row


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class DataNotFoundError(FileNotFoundError):
    """The data set was not built into the data dir; the message says how to build it."""


def _not_built(dataset: str, scene: str, layout: str, data_dir: str | os.PathLike, builder) -> str:
    """Why the scene cannot be read: the same scene built in the other layout (a config that
    forgot ``layout=``) is named with how to train on it; otherwise how to build it."""
    missing = (
        f"{dataset}/{config_name(scene, layout)} is not built in data dir {data_dir!r} "
        f"(looked for {builder.data_path})"
    )
    if os.path.isdir(data_dir):
        for other in (x for x in LAYOUTS if x != layout):
            built = make_builder(dataset, scene, other, data_dir)
            if built.is_prepared():
                return (
                    f"{missing}, but {dataset}/{config_name(scene, other)} is: the scene was "
                    f"built with --layout {other}. Train on it with layout={other} in the "
                    f"config argument (e.g. --config configs/{dataset}.py:scene={scene},"
                    f"layout={other}) or with --config.data.layout={other}"
                )
    return (
        f"{missing}. Build it with: python data_prep/build.py --dataset {dataset} "
        f"--scene {scene} --layout {layout} --manual_dir <downloaded folder> "
        f"--data_dir {data_dir}"
    )


class TFDSClipSource:
    """``ClipSource`` over a built scene: this process's rows of every global batch."""

    def __init__(
        self,
        *,
        dataset: str,
        scene: str,
        layout: str,
        data_dir: str | os.PathLike,
        clip_length: int,
        frame_size: int,
        load_size: int,
        global_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        split: str = "train",
        read_threads: int = 8,
        prefetch_batches: int = 2,
        print_fn: Callable[[str], None] = print,
    ) -> None:
        if not 0 < frame_size <= load_size:
            raise ValueError(f"need 0 < frame_size ≤ load_size, got {frame_size}, {load_size}")
        builder = make_builder(dataset, scene, layout, data_dir)
        if not os.path.isdir(data_dir) or not builder.is_prepared():
            raise DataNotFoundError(_not_built(dataset, scene, layout, data_dir, builder))
        rows = host_slice(global_batch_size, process_index, process_count)
        self.local_batch_size = rows.stop - rows.start
        self._global_batch = global_batch_size
        table = frame_table(builder, split)
        records = builder.as_data_source(split, file_format=FILE_FORMAT)
        packed = layout == "packed"
        streams = []
        counts = []
        for domain, name in enumerate(("infrared", "visible")):
            clips = clip_table(table, domain, clip_length, packed)
            if not len(clips):
                raise ValueError(
                    f"{dataset}/{config_name(scene, layout)} split {split!r} has no {name} clips "
                    f"of {clip_length} adjacent frames"
                    + (
                        " (a packed file holds only its own frames)"
                        if packed
                        else " (every video is shorter, or has gaps)"
                    )
                )
            counts.append(len(clips))
            stream = (
                grain.MapDataset.source(_ClipReader(records, clips))
                .shuffle(seed=_seed(seed, domain, 0))
                .repeat()
                .random_map(_ResizeCrop(load_size, frame_size), seed=_seed(seed, domain, 1))
            )
            streams.append(stream)
        a, b = streams
        self._local = grain.MapDataset.source(
            _HostRows(self.local_batch_size, global_batch_size, rows.start)
        ).map(lambda g: {"A": a[g], "B": b[g]})
        self._read_options = grain.ReadOptions(
            num_threads=read_threads,
            prefetch_buffer_size=max(read_threads, prefetch_batches * self.local_batch_size),
        )
        self.steps_per_epoch = max(1, max(counts) // global_batch_size)
        self._fingerprint = {
            "kind": "tfds",
            "dataset": dataset,
            "config": config_name(scene, layout),
            "split": split,
            "seed": seed,
            "global_batch_size": global_batch_size,
            "clip_length": clip_length,
            "frame_size": frame_size,
            "load_size": load_size,
            "clips": counts,
        }
        print_fn(
            f"data: {dataset}/{config_name(scene, layout)} {split}: {counts[0]} infrared and "
            f"{counts[1]} visible clips of {clip_length} frames; {self.steps_per_epoch} steps "
            f"per epoch; this process reads rows {rows.start}–{rows.stop - 1} of each batch"
        )
        self._start(0)

    def _start(self, step: int) -> None:
        self._step = step
        local = self._local[step * self.local_batch_size :]
        self._iter = iter(
            local.to_iter_dataset(self._read_options).batch(
                self.local_batch_size, drop_remainder=True
            )
        )

    def next_batch(self) -> dict[str, np.ndarray]:
        batch = next(self._iter)
        self._step += 1
        return batch

    def get_state(self) -> dict:
        return {**self._fingerprint, "step": self._step}

    def set_state(self, state: dict) -> None:
        for key, value in self._fingerprint.items():
            if state.get(key) != value:
                raise ValueError(
                    f"data state field {key!r} is {state.get(key)!r} in the checkpoint but "
                    f"{value!r} for this run: the checkpoint was written with another data "
                    "configuration"
                )
        step = state.get("step")
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"data state field 'step' must be a non-negative int, got {step!r}")
        self._start(step)
