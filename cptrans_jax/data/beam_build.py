"""Building a scene with Apache Beam: the plain build's records, made by a runner's workers.

The plain build reads every file in one process (~80 frames/s on full-size frames). With Beam
options the builder returns, per split, a transform instead of a generator, and TFDS writes its
output with Beam (``tfds.core.split_builder``: the same ``ExampleSerializer``, the same keys
hashed with the split name as salt, ``array_record`` shards written by the ArrayRecord file
adapter, so neither needs TensorFlow). Records end up in the same order as in the plain build
(both sort by the key's hash), so the frame table is the same too.

The unit of work is one video: in the packed layout that is one file (``k`` frames), in the frame
layout a folder of frames, which must be read in order to check that they share one size (as
``layouts.iter_video`` does for the plain build). The folders are listed (no decoding) where the
pipeline is built, for the counts and the chunks of videos it starts from, and again by the
workers, which expand their chunks; the decoding and PNG encoding run on the workers. What the plain
build counts in its ``ScanReport`` comes back from the workers as Beam metrics (frames: a
counter; skipped corrupt files: a string set), read in ``collect_reports`` after the run.

Runners: the local DirectRunner (``--direct_num_workers N --direct_running_mode
multi_processing``) or a cluster's (Flink, Spark, Dataflow) with its own options. The folders
are read as files (``os.walk``, PIL), so on a cluster the manual dir and the data dir must be
the same paths on every worker (a shared mount: NFS, gcsfuse), and the workers need the project
installed (in their container image, or its wheel through ``--extra_packages``).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cptrans_jax.data.builders import record
from cptrans_jax.data.layouts import (
    DOMAIN_DIRS,
    FrameError,
    ScanReport,
    Video,
    find_videos,
    iter_video,
    split_ignored,
)

INSTALL = "pip install -e '.[beam]'"
METRICS_NAMESPACE = "cptrans_jax.build"
# Brackets a worker's FrameError (base64 JSON, which survives any quoting of the message).
_TAG = "@@FrameError@@"


class BeamMissingError(ImportError):
    """Apache Beam is not installed; the message says how to install it."""


def import_beam() -> Any:
    """The ``apache_beam`` module, or BeamMissingError with the install command."""
    try:
        import apache_beam
    except ImportError:
        raise BeamMissingError(
            f"building with --beam needs Apache Beam, which is not installed: {INSTALL}"
        ) from None
    return apache_beam


def pipeline_options(runner: str, flags: Sequence[str] = ()) -> Any:
    """Beam ``PipelineOptions`` for ``runner`` and the runner's own ``--flag[=value]`` options.

    Raises ValueError for an option no Beam runner knows (Beam itself would drop it with a
    warning, and a misspelt ``--direct_num_workers`` would silently build with one worker).
    """
    beam = import_beam()
    flags = [f"--runner={runner}", *flags]
    options = beam.options.pipeline_options.PipelineOptions(flags)
    known = options.get_all_options(drop_default=False, retain_unknown_options=False)
    for flag in flags:
        if not flag.startswith("--"):
            continue
        name = flag[2:].split("=", 1)[0]
        if name not in known:
            raise ValueError(f"unknown Beam pipeline option --{name}")
    return options


@dataclasses.dataclass(frozen=True)
class _Work:
    """One video of a split, for one worker."""

    domain: int
    video: Video


@dataclasses.dataclass(frozen=True)
class _Chunk:
    """Videos ``start:stop`` of the ``total`` in one domain-split folder (by name, not by list:
    a pipeline's initial elements travel inside its job description, which a cluster runner
    caps at a few megabytes, too few for the paths of 290,000 pair files)."""

    domain: int
    split_dir: str
    start: int
    stop: int
    total: int


# Videos per chunk: listing the folder again on a worker is cheap next to decoding this many.
CHUNK = 256


def list_split(scene_dir: Path, split: str, layout: str) -> tuple[list[_Chunk], ScanReport]:
    """The chunks of ``split``'s videos, and what listing found (videos, ignored files,
    incomplete-video markers); frames and skipped files are counted by the workers."""
    chunks: list[_Chunk] = []
    report = ScanReport()
    for domain, name in enumerate(DOMAIN_DIRS[split]):
        videos, ignored = find_videos(scene_dir / name, layout)
        ignored, incomplete = split_ignored(ignored)
        report.ignored += [str(p) for p in ignored]
        report.incomplete += incomplete
        n = len(videos)
        report.videos += n
        chunks += [
            _Chunk(domain, str(scene_dir / name), i, min(i + CHUNK, n), n)
            for i in range(0, n, CHUNK)
        ]
    return chunks, report


@functools.lru_cache(maxsize=4)
def _videos(split_dir: str, layout: str) -> tuple[Video, ...]:
    return tuple(find_videos(Path(split_dir), layout)[0])


def _expand(chunk: _Chunk, layout: str) -> Iterator[_Work]:
    """The chunk's videos, listed again where it runs (once per folder and worker process)."""
    videos = _videos(chunk.split_dir, layout)
    if len(videos) != chunk.total:
        raise RuntimeError(
            f"{chunk.split_dir}: a worker finds {len(videos)} videos where the listing found "
            f"{chunk.total}; the folder changed during the build, or the workers do not see the "
            "same files (use a path every worker can read)"
        )
    for video in videos[chunk.start : chunk.stop]:
        yield _Work(chunk.domain, video)


def _examples(
    work: _Work, split: str, layout: str, k: int, skip_corrupt: bool
) -> Iterator[tuple[str, dict]]:
    """The (key, example) records of one video, counted in Beam metrics."""
    beam = import_beam()
    report = ScanReport()
    try:
        for frame in iter_video(
            work.video, work.domain, layout, k, skip_corrupt=skip_corrupt, report=report
        ):
            yield record(frame)
    except FrameError as e:
        # A runner re-raises a worker's exception as its text (a RuntimeError, from another
        # process): tagged, so that build() can raise the FrameError the plain build would.
        fields = json.dumps([e.path, e.reason, e.corrupt, e.kind])
        raise RuntimeError(f"{_TAG}{base64.b64encode(fields.encode()).decode()}{_TAG}") from e
    metrics = beam.metrics.Metrics
    metrics.counter(METRICS_NAMESPACE, f"{split}/frames").inc(report.frames)
    skipped = metrics.string_set(METRICS_NAMESPACE, f"{split}/skipped")
    for line in report.skipped:
        skipped.add(line)


def worker_error(e: BaseException) -> FrameError | None:
    """The FrameError a worker raised (see ``_examples``), if ``e`` is the runner's report of
    one; else None."""
    found = re.search(f"{_TAG}([A-Za-z0-9+/=]+){_TAG}", str(e))
    if found is None:
        return None
    path, reason, corrupt, kind = json.loads(base64.b64decode(found.group(1)))
    return FrameError(path, reason, corrupt=corrupt, kind=kind)


def read_split(
    scene_dir: Path,
    split: str,
    layout: str,
    k: int,
    skip_corrupt: bool,
    reports: dict[str, ScanReport],
) -> Any:
    """The Beam transform giving ``split``'s (key, example) records; lists the folders now and
    puts what it found in ``reports[split]``."""
    beam = import_beam()
    chunks, reports[split] = list_split(scene_dir, split, layout)
    return (
        f"List{split}" >> beam.Create(chunks)
        # Create's elements, and what one element expands to, would stay on one worker (fused
        # steps): spread them over all of them, chunks first, then videos.
        | f"SpreadChunks{split}" >> beam.Reshuffle()
        | f"Videos{split}" >> beam.FlatMap(_expand, layout=layout)
        | f"SpreadVideos{split}" >> beam.Reshuffle()
        | f"Read{split}"
        >> beam.FlatMap(_examples, split=split, layout=layout, k=k, skip_corrupt=skip_corrupt)
    )


def collect_reports(reports: dict[str, ScanReport], pipeline_result: Any) -> None:
    """Fills ``reports``' frame counts and skipped files from the workers' metrics."""
    beam = import_beam()
    query = pipeline_result.metrics().query(
        beam.metrics.MetricsFilter().with_namespace(METRICS_NAMESPACE)
    )
    for split, report in reports.items():
        for counter in query.get("counters", []):
            if counter.key.metric.name == f"{split}/frames":
                report.frames += counter.committed or 0
        for strings in query.get("string_sets", []):
            if strings.key.metric.name == f"{split}/skipped":
                report.skipped += sorted(strings.committed or ())
