"""FID, KID and flicker of a folder of translated frames against real visible frames (SPEC §7).

Command line::

    python -m cptrans_jax.evaluate --fake DIR --real DIR --inception PATH \\
        [--kid_degree 3] [--kid_subsets 100] [--kid_subset_size 1000] [--kid_seed 0] \\
        [--batch_size 50] [--cache_dir DIR] [--flicker] [--json OUT]
    python -m cptrans_jax.evaluate --fake DIR [--real DIR] --flicker [--json OUT]
    python -m cptrans_jax.evaluate --demo WORKDIR [--scenes 64] [--json OUT]

The second form (``--flicker`` without ``--inception``) measures flicker alone: no network, no
weights file. The third scores a demo training run's layout against the demo's paired truth
(:mod:`cptrans_jax.demo_quality`, which parses its arguments).

What it computes:

* Images: every ``.png``/``.jpg``/``.jpeg``/``.bmp`` under each folder, recursively, ordered by
  their path relative to the folder with numbers compared numerically (``frame_9`` before
  ``frame_10``). Decoded with PIL and converted to 8-bit RGB (grayscale is replicated to three
  channels, alpha dropped), as pytorch-fid does.
* Features: the 2048-d pool3 features of the FID Inception-v3
  (:mod:`cptrans_jax.models.inception`; pytorch-fid's weights file, see
  :mod:`cptrans_jax.inception_weights`), batched and jitted; the last batch is zero-padded to the
  batch size so one program serves every batch, and with several local devices each batch is
  split over a ``data`` mesh axis (when the batch size divides over them). Images of different
  sizes are batched separately (one compile per size).
* FID between the fake and real features' Gaussians and KID (unbiased MMD², polynomial kernel of
  ``--kid_degree``, mean ± std over ``--kid_subsets`` random subsets of ``--kid_subset_size``
  images per set, seeded by ``--kid_seed``), by :mod:`cptrans_jax.eval_stats`, plus the papers'
  table forms FID/100 and KID×100 (:func:`cptrans_jax.eval_stats.paper_scale`).
* ``--flicker``: the temporal flicker of each folder: for every pair of consecutive frames of
  one clip (a clip = the images directly inside one directory, in the order above), the mean
  over pixels and RGB channels of |frame_t − frame_{t−1}| in 8-bit units [0, 255]; reported as
  the mean (and std) over all pairs of the folder, with the number of pairs and clips. It needs
  no network: raw frame-to-frame change, so it mixes motion with flicker; compare the
  translation's value with the real video's (the same statistic on ``--real``) rather than
  reading it alone. A folder without any consecutive pair reports ``null``.

The real set's features are cached with ``--cache_dir``: ``fid_real_<key>.npz`` holds the
features (N, 2048) float32 (what KID needs), their mean and covariance (float64) and the file
list, where ``<key>`` hashes the sorted file list with every file's size and modification time,
a fingerprint of the Inception weights' values and the feature definition. Changing, adding or
touching a real image, or other weights, gives a new key, so a stale file is never used.

Outputs are written atomically: the ``--json`` file and a cache file are written under a
temporary name beside them and renamed into place, so a failure (a full disk, Ctrl-C) never
leaves a half-written file and never truncates an existing one. Both places are checked before
any work: ``--json``'s folder and ``--cache_dir`` are created if missing and must be writable.
A cache file that cannot be written later (say, the disk fills up) is reported in one
``warning:`` line and skipped: the results are computed and written all the same.

Bad input (a missing or empty folder, an undecodable image, fewer images than the KID subset
size, a missing or mismatched weights file, no ``--inception`` or ``--real`` for FID, a
``--json`` or ``--cache_dir`` that cannot be written) ends the command with one ``error: ...``
line on stderr and exit status 2.

Library functions: :func:`extract_features`, :func:`folder_statistics`,
:func:`evaluate_folders`; the image listing and reading and flicker live in
:mod:`cptrans_jax.eval_images` (:func:`list_images`, :func:`read_image`, :func:`flicker`,
:func:`flicker_folders`) and are importable from here too.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from cptrans_jax import eval_stats
from cptrans_jax.cli import run_report
from cptrans_jax.eval_images import (  # noqa: F401 (IMAGE_EXTENSIONS: re-exported)
    IMAGE_EXTENSIONS,
    EvalInputError,
    flicker,
    flicker_folders,
    flicker_lines,
    image_size,
    list_images,
    read_image,
)
from cptrans_jax.inception_weights import (
    FID_WEIGHTS_FILE,
    FID_WEIGHTS_URL,
    load_inception_params,
)
from cptrans_jax.models.inception import FEATURE_DIM, inception_features
from cptrans_jax.sharding import batch_sharding, local_data_mesh, replicated

# Part of every cache key: bump when the features of the same images and weights would change.
_FEATURE_VERSION = "fid-inception-v3/pytorch-fid-preprocessing/v1"

Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- outputs


def _make_dirs(folder: str) -> list[str]:
    """Creates ``folder`` and its missing parents; returns those created, outermost first."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    created = []
    try:
        for d in reversed(missing):
            os.mkdir(d)
            created.append(d)
    except OSError:
        _remove_dirs(created)
        raise
    return created


def _remove_dirs(created: list[str]) -> None:
    """Removes folders :func:`_make_dirs` created, innermost first, each only if empty."""
    for d in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(d)


def _reason(e: OSError) -> str:
    return (e.strerror or str(e)) + (f": {e.filename}" if e.filename else "")


def check_output_dir(folder: str | os.PathLike, option: str) -> None:
    """Creates ``folder`` if missing and checks that files can be written in it.

    Raises:
        EvalInputError: it is a file, cannot be created or cannot be written, in one line.
    """
    folder = os.path.abspath(os.fspath(folder))
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == folder else f"is inside {existing}, which is a file"
        raise EvalInputError(f"{option} {folder} {where}; expected a folder")
    try:
        _make_dirs(folder)
    except OSError as e:
        raise EvalInputError(
            f"{option} {folder}: cannot create it ({_reason(e)}); expected a folder you can "
            "write to"
        ) from None
    probe = os.path.join(folder, f".write-test-{os.getpid()}")
    try:
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise EvalInputError(
            f"{option} {folder}: cannot write there ({e.strerror or e}); expected a folder you "
            "can write to"
        ) from None


class OutputFile:
    """A file that appears only complete: created empty under ``.<name>.partial-<pid>`` beside
    the target at once (which checks the place), renamed onto the target by :meth:`write`."""

    def __init__(self, path: str | os.PathLike, option: str) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.option = option
        if os.path.isdir(self.path):
            raise EvalInputError(f"{option} {self.path} is a folder; expected a file path")
        folder, name = os.path.split(self.path)
        self.temp = os.path.join(folder, f".{name}.partial-{os.getpid()}")
        self._created: list[str] = []
        expected = "expected a file in a folder you can write to"
        existing = folder
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise EvalInputError(f"{option} {self.path}: {existing} is a file; {expected}")
        try:
            self._created = _make_dirs(folder)
        except OSError as e:
            raise EvalInputError(
                f"{option} {self.path}: cannot create the folder {e.filename or folder} "
                f"({e.strerror or e}); {expected}"
            ) from None
        try:
            with open(self.temp, "wb"):
                pass
        except OSError as e:
            self.discard()
            raise EvalInputError(
                f"{option} {self.path}: cannot write in {folder} ({e.strerror or e}); {expected}"
            ) from None

    def write(self, text: str) -> None:
        """Writes ``text`` and renames it into place (the temporary file is removed on error)."""
        try:
            with open(self.temp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self.temp, self.path)
        except OSError as e:
            self.discard()
            unchanged = "left as it was" if os.path.exists(self.path) else "not written"
            raise OSError(
                f"{self.option} {self.path}: writing failed ({e.strerror or e}); the file is "
                f"{unchanged}"
            ) from None
        except BaseException:
            self.discard()
            raise
        self._created = []

    def discard(self) -> None:
        """Removes the temporary file and the folders created for it."""
        with contextlib.suppress(OSError):
            os.remove(self.temp)
        _remove_dirs(self._created)
        self._created = []


# ----------------------------------------------------------------------------- features


def _placement(batch_size: int) -> tuple[Callable[[np.ndarray], Any], Callable[[Any], Any]]:
    """How to place a batch and the weights: split over a ``data`` mesh of the local devices
    when the batch divides over them; otherwise leave both on the default device."""
    n = jax.local_device_count()
    if n == 1 or batch_size % n:
        return (lambda x: x), (lambda tree: tree)
    mesh = local_data_mesh()
    data, rep = batch_sharding(mesh), replicated(mesh)
    return (lambda x: jax.device_put(x, data)), (lambda t: jax.device_put(t, rep))


def extract_features(
    paths: Sequence[str],
    variables: Mapping[str, Any],
    *,
    batch_size: int = 50,
    progress: Progress | None = _stderr,
    label: str = "features",
    log_every: int = 10,
) -> np.ndarray:
    """FID Inception pool3 features (N, 2048) float32 of the images at ``paths``, in order.

    Batches of ``batch_size`` images of one size run through one jitted program (the last batch
    zero-padded to the full size); decoding of the next batch overlaps the device's work on the
    current one. ``progress`` gets a line every ``log_every`` batches and at the end.
    """
    if batch_size < 1:
        raise EvalInputError(f"batch size must be ≥ 1, got {batch_size}")
    paths = list(paths)
    out = np.zeros((len(paths), FEATURE_DIM), np.float32)
    if not paths:
        return out
    # Group by size (headers only): a batch must be one array. Usually there is one group.
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(paths):
        groups.setdefault(image_size(p), []).append(i)
    batches = [
        idx[s : s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)
    ]
    put_batch, put_tree = _placement(batch_size)
    variables = put_tree(variables)
    start, done = time.perf_counter(), 0

    def report() -> None:
        if progress is not None:
            rate = done / max(time.perf_counter() - start, 1e-9)
            progress(f"{label}: {done}/{len(paths)} images, {rate:.1f} images/s")

    def finish(pending: tuple[jax.Array, list[int]], number: int) -> None:
        nonlocal done
        features, idx = pending
        out[idx] = np.asarray(features)[: len(idx)]
        done += len(idx)
        if number % log_every == 0 or done == len(paths):
            report()

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        pending = None
        for number, idx in enumerate(batches):
            images = list(pool.map(read_image, (paths[i] for i in idx)))
            batch = np.zeros((batch_size, *images[0].shape), np.uint8)
            batch[: len(images)] = images  # rows past the end stay zero: padding
            features = inception_features(variables, put_batch(batch))  # dispatched async
            if pending is not None:
                finish(pending, number)
            pending = (features, idx)
        finish(pending, len(batches))
    return out


@dataclass(frozen=True)
class FolderStatistics:
    """Features of one folder and the Gaussian FID fits to them."""

    folder: str
    paths: list[str]
    features: np.ndarray  # (N, 2048) float32
    mu: np.ndarray  # (2048,) float64
    sigma: np.ndarray  # (2048, 2048) float64
    cache_file: str | None = None
    from_cache: bool = False


def weights_fingerprint(variables: Mapping[str, Any]) -> str:
    """SHA-256 of every weight's path, shape, dtype and bytes: the identity of the network,
    whatever file (or copy of it) it came from."""
    h = hashlib.sha256()
    for path, leaf in sorted(
        jax.tree_util.tree_flatten_with_path(variables)[0],
        key=lambda kv: jax.tree_util.keystr(kv[0]),
    ):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.shape}|{a.dtype}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _cache_key(folder: str, paths: Sequence[str], weights_id: str) -> str:
    h = hashlib.sha256(f"{_FEATURE_VERSION}\n{weights_id}\n".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.relpath(p, folder)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _load_cache(path: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            features, mu, sigma = z["features"], z["mu"], z["sigma"]
    except (OSError, ValueError, KeyError):
        return None  # unreadable or partial: recompute (and overwrite)
    if features.shape != (n, FEATURE_DIM) or sigma.shape != (FEATURE_DIM, FEATURE_DIM):
        return None
    return features, mu, sigma


def folder_statistics(
    folder: str | os.PathLike,
    variables: Mapping[str, Any],
    *,
    batch_size: int = 50,
    cache_dir: str | os.PathLike | None = None,
    weights_id: str | None = None,
    progress: Progress | None = _stderr,
    label: str | None = None,
) -> FolderStatistics:
    """Features, mean and covariance of every image in ``folder``.

    With ``cache_dir``, they are read from / written to ``fid_real_<key>.npz`` there (see the
    module docstring for the key); ``weights_id`` defaults to :func:`weights_fingerprint`.
    """
    folder = os.fspath(folder)
    paths = list_images(folder)
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(folder, paths, weights_id or weights_fingerprint(variables))
        cache_file = os.path.join(os.fspath(cache_dir), f"fid_real_{key}.npz")
        if os.path.exists(cache_file):
            cached = _load_cache(cache_file, len(paths))
            if cached is not None:
                if progress is not None:
                    progress(f"{folder}: statistics of {len(paths)} images read from {cache_file}")
                return FolderStatistics(folder, paths, *cached, cache_file, True)
    features = extract_features(
        paths, variables, batch_size=batch_size, progress=progress, label=label or folder
    )
    mu, sigma = eval_stats.feature_statistics(features)
    if cache_file is not None:
        rel = np.array([os.path.relpath(p, folder) for p in paths], dtype=str)
        try:
            _write_cache(cache_file, features=features, mu=mu, sigma=sigma, paths=rel)
        except OSError as e:
            (progress or _stderr)(
                f"warning: the feature cache {cache_file} could not be written ({_reason(e)}); "
                "the results are not affected"
            )
            cache_file = None
    return FolderStatistics(folder, paths, features, mu, sigma, cache_file, False)


def _write_cache(cache_file: str, **arrays: np.ndarray) -> None:
    """``np.savez`` under a temporary name, renamed into place: never a half-written cache
    under the real name, and nothing left behind when the write fails."""
    os.makedirs(os.path.dirname(cache_file), exist_ok=True)
    tmp = f"{cache_file}.tmp.{os.getpid()}.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, cache_file)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


# ----------------------------------------------------------------------------- evaluate


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise EvalInputError(f"{name} must be ≥ {minimum}, got {value}")


def evaluate_folders(
    fake: str | os.PathLike,
    real: str | os.PathLike,
    inception: str | os.PathLike | Mapping[str, Any],
    *,
    kid_degree: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    kid_seed: int = 0,
    batch_size: int = 50,
    cache_dir: str | os.PathLike | None = None,
    with_flicker: bool = False,
    progress: Progress | None = _stderr,
) -> dict[str, Any]:
    """FID, KID (and optionally flicker) of the images in ``fake`` against those in ``real``.

    ``inception`` is the weights file, a loaded ``state_dict`` mapping, or variables
    ``{"params", "batch_stats"}`` already loaded. Only the real set's statistics are cached.
    Returns a JSON-ready dict (see :func:`format_report` for the labels).
    """
    _positive("--kid_degree", kid_degree)
    _positive("--kid_subsets", kid_subsets)
    _positive("--kid_subset_size", kid_subset_size, 2)
    _positive("--batch_size", batch_size)
    fake, real = os.fspath(fake), os.fspath(real)
    # Check both folders before anything expensive (loading weights, compiling).
    counts = {}
    for name, folder in (("fake", fake), ("real", real)):
        counts[name] = n = len(list_images(folder))
        if n < 2:
            raise EvalInputError(f"{folder}: FID needs at least 2 images, found {n}")
    smallest = min(counts.values())
    if kid_subset_size > smallest:
        which = min(counts, key=counts.get)
        raise EvalInputError(
            f"KID subset size {kid_subset_size} is larger than the {smallest} {which} images "
            f"({fake if which == 'fake' else real}); pass --kid_subset_size {smallest} or less"
        )

    if cache_dir is not None:
        check_output_dir(cache_dir, "--cache_dir")

    if isinstance(inception, Mapping) and "params" in inception:
        variables, weights_name = inception, "<variables>"
    else:
        variables = load_inception_params(inception)
        weights_name = "<state_dict>" if isinstance(inception, Mapping) else os.fspath(inception)
    weights_id = weights_fingerprint(variables) if cache_dir is not None else None

    real_stats = folder_statistics(
        real,
        variables,
        batch_size=batch_size,
        cache_dir=cache_dir,
        weights_id=weights_id,
        progress=progress,
        label="real",
    )
    fake_stats = folder_statistics(
        fake, variables, batch_size=batch_size, progress=progress, label="fake"
    )
    fid_value = eval_stats.frechet_distance(
        fake_stats.mu, fake_stats.sigma, real_stats.mu, real_stats.sigma
    )
    kid_mean, kid_std = eval_stats.kid(
        fake_stats.features,
        real_stats.features,
        degree=kid_degree,
        num_subsets=kid_subsets,
        subset_size=kid_subset_size,
        seed=kid_seed,
    )
    paper = eval_stats.paper_scale(fid_value, kid_mean)
    paper["KIDx100_std"] = kid_std * 100.0
    result: dict[str, Any] = {
        "fake": fake,
        "real": real,
        "inception": weights_name,
        "num_fake": len(fake_stats.paths),
        "num_real": len(real_stats.paths),
        "fid": fid_value,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_degree": kid_degree,
        "kid_subsets": kid_subsets,
        "kid_subset_size": kid_subset_size,
        "kid_seed": kid_seed,
        "paper_scale": paper,
        "real_cache_file": real_stats.cache_file,
        "real_from_cache": real_stats.from_cache,
    }
    if with_flicker:
        result["flicker"] = {"fake": flicker(fake_stats.paths), "real": flicker(real_stats.paths)}
    return result


def format_report(result: Mapping[str, Any]) -> str:
    """The labelled human-readable lines of an :func:`evaluate_folders` (or, without FID,
    :func:`flicker_folders`) result."""
    if "fid" not in result:
        lines = [f"{n}: {result[n]} ({result[f'num_{n}']} images)" for n in result["flicker"]]
        return "\n".join(lines + flicker_lines(result["flicker"]))
    paper = result["paper_scale"]
    lines = [
        f"fake: {result['fake']} ({result['num_fake']} images)",
        f"real: {result['real']} ({result['num_real']} images"
        + (", statistics from cache)" if result["real_from_cache"] else ")"),
        f"FID: {result['fid']:.4f}",
        f"KID (polynomial kernel degree {result['kid_degree']}, {result['kid_subsets']} subsets "
        f"of {result['kid_subset_size']}): {result['kid_mean']:.6f} ± {result['kid_std']:.6f}",
        f"paper scale: FID/100 = {paper['FID/100']:.4f}, "
        f"KIDx100 = {paper['KIDx100']:.4f} ± {paper['KIDx100_std']:.4f}",
    ]
    if "flicker" in result:
        lines += flicker_lines(result["flicker"])
    if min(result["num_fake"], result["num_real"]) < FEATURE_DIM:
        lines.append(
            f"note: fewer than {FEATURE_DIM} images in a set: its feature covariance is singular "
            "and FID is strongly biased by the set size; compare only FIDs of equal-size sets"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cptrans_jax.evaluate",
        description=(
            "FID and KID of translated frames (--fake) against real visible frames (--real) on "
            "FID Inception-v3 pool3 features, with the papers' FID/100 and KIDx100. Images: "
            "png/jpg/jpeg/bmp, searched recursively."
        ),
    )
    p.add_argument("--fake", required=True, help="folder of translated frames")
    p.add_argument(
        "--real", default=None, help="folder of real visible frames (needed for FID and KID)"
    )
    p.add_argument(
        "--inception",
        default=None,
        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (from its GitHub release "
        "'fid_weights'); needed for FID and KID, not for --flicker alone",
    )
    p.add_argument(
        "--kid_degree",
        type=int,
        default=3,
        help="KID polynomial kernel degree (default 3; the CPTrans paper uses 21)",
    )
    p.add_argument("--kid_subsets", type=int, default=100, help="KID subsets (default 100)")
    p.add_argument(
        "--kid_subset_size", type=int, default=1000, help="images per KID subset (default 1000)"
    )
    p.add_argument("--kid_seed", type=int, default=0, help="seed of the KID subsets (default 0)")
    p.add_argument("--batch_size", type=int, default=50, help="images per batch (default 50)")
    p.add_argument(
        "--cache_dir",
        default=None,
        help="cache the real set's features and statistics here (keyed by the files' names, "
        "sizes and mtimes and the weights)",
    )
    p.add_argument(
        "--flicker",
        action="store_true",
        help="also report temporal flicker: per folder, the mean over consecutive frame pairs "
        "(frames in the same directory, in natural file-name order) of the mean absolute "
        "pixel difference in 0-255 units",
    )
    p.add_argument(
        "--json",
        default=None,
        help="also write the results to this JSON file (its folder is created; written whole)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--demo" in argv:  # the demo's layout score has its own command; this is an alias
        from cptrans_jax import demo_quality

        return demo_quality.main([a for a in argv if a != "--demo"])
    args = _parser().parse_args(argv)

    # EvalInputError, CheckpointMismatchError, an unreadable weights or output file are
    # ValueError or OSError: the user's to fix, so run_report prints a message for them.
    def check() -> None:
        if args.inception is None:
            if not args.flicker:
                raise EvalInputError(
                    f"FID and KID need --inception {FID_WEIGHTS_FILE} (download it from "
                    f"{FID_WEIGHTS_URL}); pass --flicker alone for flicker without it"
                )
        elif args.real is None:
            raise EvalInputError("FID and KID need --real, the folder of real visible frames")

    def compute() -> dict:
        if args.inception is None:  # flicker alone: no network, nothing to load or compile
            return flicker_folders(args.fake, args.real)
        return evaluate_folders(
            args.fake,
            args.real,
            args.inception,
            kid_degree=args.kid_degree,
            kid_subsets=args.kid_subsets,
            kid_subset_size=args.kid_subset_size,
            kid_seed=args.kid_seed,
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
            with_flicker=args.flicker,
        )

    return run_report(compute, format_report, json_path=args.json, check=check)


if __name__ == "__main__":
    sys.exit(main())
