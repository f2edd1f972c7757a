"""TFDS builders for IRVI, InfraredCity-Lite and InfraredCity-Adverse (manual download).

One example per frame: ``image`` (PNG, RGB), ``domain`` (infrared / visible), ``video`` (the id of
the video or packed file it came from) and ``frame_index`` (its position there). Splits ``train``
and ``test``. Builder configs: one per scene for the authors' packed files (``traffic``,
``city_clearday``, …) and one per scene for plain frame folders (``traffic_frames``, …); see
``layouts.py`` for both layouts. Files are ``array_record``, so neither building nor reading needs
TensorFlow.

array_record files do not keep write order, so clips cannot be read as "the next record": after a
build, ``frame_table`` records each record's (domain, video, frame) once, next to the data set,
and the input pipeline assembles clips of adjacent frames from it.

Nothing half-built: TFDS writes a scene into ``<version>.incomplete…`` and renames it into place
when every split is written (and removes it when the build fails). Before that, :func:`build`
checks that the data dir is a folder it can write to (a scene already built there is reused
even when it is read-only); when the build fails, the folders it created on the way (and TFDS's
``.config`` note of a data set folder it created) are removed too. A data dir that is a file,
cannot be created or cannot be written, and a write that fails during the build (a full disk),
raise :class:`DataDirError` in one line.

With Beam ``PipelineOptions`` (``build(beam_options=…)``, ``data_prep/build.py --beam``) the same
builder returns Beam transforms instead of generators and a Beam runner's workers make the same
records (``beam_build.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from cptrans_jax.data.layouts import (
    DATASETS,
    DOMAIN_DIRS,
    DOMAINS,
    LAYOUTS,
    DataLayoutError,
    Frame,
    ScanReport,
    check_structure,
    iter_split,
    layout_help,
)

FILE_FORMAT = "array_record"


class DataDirError(ValueError):
    """The data dir cannot take the build (a file, not writable, a failed write): one line."""


@dataclasses.dataclass
class SceneConfig(tfds.core.BuilderConfig):
    """A scene of a data set in one layout."""

    scene: str = ""
    layout: str = "packed"


def config_name(scene: str, layout: str) -> str:
    """Builder-config name: the scene for packed files, ``<scene>_frames`` for frame folders."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return scene if layout == "packed" else f"{scene}_frames"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # Level 3: most of level 9's size at a fraction of its time; lossless either way.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


class _SceneDataset(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared by the three data sets; subclasses name the data set (``DATASET``)."""

    DATASET = ""
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version: one example per frame, train and test splits."}

    def __init__(
        self, *, skip_corrupt: bool = False, beam_options: object | None = None, **kwargs
    ) -> None:
        self.skip_corrupt = skip_corrupt
        # Beam PipelineOptions: build with Apache Beam (beam_build.py) instead of in this process.
        self.beam_options = beam_options
        self.reports: dict[str, ScanReport] = {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.DATASET}: unpaired infrared (A) and visible (B) video frames.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "domain": tfds.features.ClassLabel(names=list(DOMAINS)),
                    "video": tfds.features.Text(),
                    "frame_index": np.int32,
                }
            ),
        )

    def _scene_dir(self, manual_dir: str | os.PathLike) -> Path:
        return Path(manual_dir) / self.builder_config.scene

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        scene_dir = self._scene_dir(dl_manager.manual_dir)
        config = self.builder_config
        problems = check_structure(scene_dir, config.layout, DATASETS[self.DATASET].packed_frames)
        if problems:
            raise DataLayoutError(problems, f"{self.DATASET}/{config.name}: the manual folder:")
        if self.beam_options is not None:
            from cptrans_jax.data import beam_build

            k = DATASETS[self.DATASET].packed_frames
            return {
                split: beam_build.read_split(
                    scene_dir, split, config.layout, k, self.skip_corrupt, self.reports
                )
                for split in DOMAIN_DIRS
            }
        return {split: self._generate_examples(scene_dir, split) for split in DOMAIN_DIRS}

    def _generate_examples(self, scene_dir: Path, split: str):
        report = self.reports.setdefault(split, ScanReport())
        config = self.builder_config
        k = DATASETS[self.DATASET].packed_frames
        for frame in iter_split(
            scene_dir, split, config.layout, k, skip_corrupt=self.skip_corrupt, report=report
        ):
            yield record(frame)

    def _process_pipeline_result(self, pipeline_result: object) -> None:
        # Called by TFDS after a Beam build: the workers' frame counts and skipped files.
        from cptrans_jax.data import beam_build

        beam_build.collect_reports(self.reports, pipeline_result)


def record(frame: Frame) -> tuple[str, dict]:
    """The TFDS (key, example) of one frame; the key orders records (TFDS sorts by its hash)."""
    key = f"{frame.domain}/{frame.video_id}/{frame.frame_index:08d}"
    return key, {
        "image": _png(frame.pixels),
        "domain": frame.domain,
        "video": frame.video_id,
        "frame_index": frame.frame_index,
    }


def _configs(dataset: str) -> list[SceneConfig]:
    return [
        SceneConfig(
            name=config_name(scene, layout),
            scene=scene,
            layout=layout,
            description=f"{scene}, "
            + ("the authors' packed files" if layout == "packed" else "plain frame folders"),
        )
        for scene in DATASETS[dataset].scenes
        for layout in LAYOUTS
    ]


def _manual_instructions(dataset: str) -> str:
    spec = DATASETS[dataset]
    lines = [
        spec.obtain,
        "",
        "Put each scene in its own folder under the manual dir:",
        "  <manual_dir>/<scene>/trainA, trainB, testA, testB   (A = infrared, B = visible)",
        f"scenes: {', '.join(spec.scenes)}.",
        f"Builder config <scene>: the authors' packed files ({spec.packed_frames} frames side by "
        "side), found recursively and sorted by path.",
        "Builder config <scene>_frames: one folder of ordered frames per video "
        "(data_prep/video_to_frames.py writes these from mp4/avi files).",
        "Check a folder first with: python data_prep/validate.py --dataset "
        f"{dataset} --scene <scene> --manual_dir <manual_dir>",
    ]
    return "\n".join(lines)


class Irvi(_SceneDataset):
    """IRVI (I2V-GAN): infrared and visible traffic and monitoring video."""

    DATASET = "irvi"
    BUILDER_CONFIGS = _configs("irvi")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _manual_instructions("irvi")


class InfraredcityLite(_SceneDataset):
    """InfraredCity-Lite (ROMA): nighttime infrared, daytime visible city/highway/monitor video."""

    DATASET = "infraredcity_lite"
    BUILDER_CONFIGS = _configs("infraredcity_lite")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _manual_instructions("infraredcity_lite")


class InfraredcityAdverse(_SceneDataset):
    """InfraredCity-Adverse (CPTrans): rain and snow scenes."""

    DATASET = "infraredcity_adverse"
    BUILDER_CONFIGS = _configs("infraredcity_adverse")
    MANUAL_DOWNLOAD_INSTRUCTIONS = _manual_instructions("infraredcity_adverse")


BUILDERS: dict[str, type[_SceneDataset]] = {
    cls.DATASET: cls for cls in (Irvi, InfraredcityLite, InfraredcityAdverse)
}


def make_builder(
    dataset: str, scene: str, layout: str, data_dir: str | os.PathLike, **kwargs
) -> _SceneDataset:
    """The builder of one scene/layout under ``data_dir`` (built or not)."""
    if dataset not in BUILDERS:
        raise ValueError(f"unknown data set {dataset!r}; expected one of {sorted(BUILDERS)}")
    scenes = DATASETS[dataset].scenes
    if scene not in scenes:
        raise ValueError(f"{dataset} has no scene {scene!r}; expected one of {scenes}")
    return BUILDERS[dataset](
        config=config_name(scene, layout),
        data_dir=os.fspath(data_dir),
        file_format=FILE_FORMAT,
        **kwargs,
    )


def build(
    dataset: str,
    scene: str,
    layout: str,
    manual_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    skip_corrupt: bool = False,
    beam_options: object | None = None,
    print_fn: Callable[[str], None] = print,
) -> _SceneDataset:
    """Build one scene from the manual folder into ``data_dir`` and index its frames.

    Raises DataLayoutError (every structural problem) or FrameError (the first bad file; corrupt
    files are skipped and counted instead when ``skip_corrupt``), or DataDirError (``data_dir``
    is a file, cannot be written, or a write failed; nothing half-built is left, see the module
    docstring). An already built scene is reused, as TFDS does. ``beam_options`` (Beam
    ``PipelineOptions``, see ``beam_build.pipeline_options``) builds it with Apache Beam: the
    same records, made by the runner's workers.
    """
    builder = make_builder(
        dataset, scene, layout, data_dir, skip_corrupt=skip_corrupt, beam_options=beam_options
    )
    k = DATASETS[dataset].packed_frames
    scene_dir = Path(manual_dir) / scene
    if not Path(manual_dir).is_dir():
        raise DataLayoutError(
            [f"missing folder {manual_dir} ({layout_help(scene_dir, layout, k)})"],
            f"{dataset}/{builder.builder_config.name}: the manual folder:",
        )
    # What TFDS checks to reuse a built scene (which works even from a read-only data dir).
    if not builder.data_path.exists():
        root = Path(os.path.abspath(os.fspath(data_dir)))
        before = _entries(root)
        created = _check_data_dir(root)
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    manual_dir=os.fspath(manual_dir), beam_options=beam_options
                )
            )
        except BaseException as e:
            _remove_new(root, before, created)
            if beam_options is not None:
                from cptrans_jax.data.beam_build import worker_error

                if (frame_error := worker_error(e)) is not None:
                    raise frame_error from None
            # TFDS reports a failed write of a split (a full disk, say) as a RuntimeError.
            if isinstance(e, (OSError, RuntimeError)):
                raise DataDirError(
                    f"building {dataset}/{builder.builder_config.name} into {root} failed: "
                    f"{_one_line(e)}; nothing of it was kept"
                ) from e
            raise
    for split, report in builder.reports.items():
        print_fn(
            f"{split}: {report.frames} frames from {report.videos} videos"
            + (f"; skipped {len(report.skipped)} corrupt files" if report.skipped else "")
            + (f"; ignored {len(report.ignored)} non-image files" if report.ignored else "")
            + (f"; {len(report.incomplete)} incomplete videos" if report.incomplete else "")
        )
        for line in report.skipped:
            print_fn(f"  skipped {line}")
        for line in report.incomplete:
            print_fn(f"  warning: {line}")
    for split in DOMAIN_DIRS:
        table = frame_table(builder, split)
        counts = np.bincount(table["domain"], minlength=2)
        print_fn(f"{split}: {counts[0]} infrared, {counts[1]} visible frames indexed")
    print_fn(f"built {builder.name}/{builder.builder_config.name} in {builder.data_dir}")
    return builder


def _one_line(e: BaseException, limit: int = 300) -> str:
    if isinstance(e, OSError) and e.strerror:
        text = e.strerror + (f": {e.filename}" if e.filename else "")
    else:
        text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_data_dir(root: Path) -> list[Path]:
    """Makes sure ``root`` is (or can be created as) a folder we can write to; returns the
    folders it created, outermost first."""
    existing, missing = root, []
    while not existing.exists():
        missing.append(existing)
        existing = existing.parent
    expected = "expected a folder you can write to (it is created if missing)"
    if not existing.is_dir():
        what = "is a file" if existing == root else f"is inside {existing}, which is a file"
        raise DataDirError(f"data dir {root} {what}; {expected}")
    created: list[Path] = []
    try:
        for folder in reversed(missing):
            os.mkdir(folder)
            created.append(folder)
    except OSError as e:
        _rmdirs(created)
        raise DataDirError(
            f"cannot create the data dir {root} ({_one_line(e)}); {expected}"
        ) from None
    try:
        fd, probe = tempfile.mkstemp(dir=root, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        _rmdirs(created)
        raise DataDirError(
            f"data dir {root} is not writable ({e.strerror or e}); {expected}, or one where "
            "this scene is already built"
        ) from None
    return created


def _rmdirs(folders: list[Path]) -> None:
    """Removes ``folders`` (outermost first) innermost first, each only if empty."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _entries(root: Path, depth: int = 3) -> set[Path]:
    """Every path under ``root`` down to ``depth`` levels (data set / config / version)."""
    found: set[Path] = set()
    level = [root] if root.is_dir() else []
    for _ in range(depth):
        below = []
        for folder in level:
            with contextlib.suppress(OSError):
                for entry in folder.iterdir():
                    found.add(entry)
                    if entry.is_dir() and not entry.is_symlink():
                        below.append(entry)
        level = below
    return found


def _remove_new(root: Path, before: set[Path], created: list[Path]) -> None:
    """After a failed build: removes the folders it created (empty ones only) and TFDS's
    ``.config`` note in a data set folder that is new; nothing that was there before."""
    for path in sorted(_entries(root) - before, key=lambda p: len(p.parts), reverse=True):
        new_parent = path.parent != root and path.parent not in before
        if path.name == ".config" and new_parent and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()
    _rmdirs(created)


def frame_table(builder: _SceneDataset, split: str) -> dict[str, np.ndarray]:
    """Each record's domain, video number and frame index, in record order.

    ``video`` numbers index ``videos`` (sorted ids, domain-prefixed). Read once by scanning the
    records without decoding images, then cached as ``frame_table-<split>.npz`` in the data set's
    folder (kept in memory only when that folder is read-only).
    """
    cache = Path(builder.data_dir) / f"frame_table-{split}.npz"
    n = builder.info.splits[split].num_examples
    if cache.exists():
        with np.load(cache) as f:
            table = {key: f[key] for key in f.files}
        if len(table["domain"]) == n:
            return table
    records = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    domain = np.empty(n, np.int8)
    frame = np.empty(n, np.int32)
    names = []
    for i in range(n):
        record = records[i]
        domain[i] = record["domain"]
        frame[i] = record["frame_index"]
        video = record["video"]
        names.append(f"{domain[i]}/{video.decode() if isinstance(video, bytes) else video}")
    videos, video = np.unique(np.array(names, dtype=object).astype(str), return_inverse=True)
    table = {"domain": domain, "video": video.astype(np.int32), "frame": frame, "videos": videos}
    try:
        tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, **table)
        os.replace(tmp, cache)  # atomic: concurrent hosts never read a half-written table
    except OSError:
        pass
    return table
