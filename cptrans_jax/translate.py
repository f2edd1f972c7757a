"""Translate infrared video, a folder of frames or one image with a trained generator.

Usage::

    python -m cptrans_jax.translate --checkpoint CKPT --input IN --output OUT \\
        [--size 256] [--output_size model|input] [--batch_size 8] [--fps F]

``CKPT`` is one of

* a training work directory (``<workdir>/config.json`` + ``<workdir>/checkpoints/<step>/``):
  the newest checkpoint is used;
* one checkpoint, ``<workdir>/checkpoints/<step>``;
* the authors' PyTorch generator, ``latest_net_G.pth`` (its ngf and block count read from it).

Only G's parameters are read from an Orbax checkpoint (a partial restore onto one device; the
discriminator and optimizer states are never loaded). G's size comes from the work directory's
``config.json`` (``model.ngf``, ``model.n_blocks``), or from the parameter shapes when there is
none, and is checked against the checkpoint before anything is read.

``IN`` is a video file (.mp4 .avi .mov .mkv .webm), a folder of frames (.png .jpg .jpeg .bmp
.tif, natural order: ``frame_2`` before ``frame_10``) or one image. Gray (infrared) and RGB
input are both accepted; gray is replicated to 3 channels, as the authors' loader does.

``OUT``, by its suffix: a video file (.mp4/.mov/.mkv: H.264, .avi: MPEG-4, .webm: VP9; fps from
``--fps``, else the input video's, else 25), an image file (.png etc.; only for one input image)
or, without a suffix, a folder of PNG frames ``000000.png, 000001.png, …`` in input order (one
input image goes to ``OUT/<input stem>.png``).

Frame-size policy:

* ``--size N`` (default 256): every frame is resized (bicubic, Pillow — what the authors' test
  preprocessing ``Resize([256, 256], BICUBIC)`` does to its PIL frames) to N×N, aspect ratio
  not kept, and G runs at N×N.
* ``--size 0``: frames keep their native size; G runs on it with H and W rounded up to multiples
  of 4 by reflect-padding the bottom and right, and its output is cropped back.
* ``--output_size model`` (default): the output has the size G ran at (N×N, or native with
  ``--size 0``). ``--output_size input``: each output frame is resized (bicubic) back to its
  input frame's size (nothing to do with ``--size 0``).

Inference is one jitted function ``(params, uint8 frames) → uint8 frames``: [0, 255] → [-1, 1]
as ToTensor + Normalize(0.5, 0.5), G, then SPEC §5's quantisation (clamp, (x+1)/2·255, truncate).
Its batch has a fixed size (``--batch_size`` rounded up to a multiple of the local device count;
the last batch is padded), split over all local devices on a ``data`` mesh axis, so it compiles
once per frame size. Frames are streamed: one batch is read while the previous one runs, and a
long video is never held in memory. A progress line (frames done/total, frames/s, ETA) is
printed every few seconds.

Bad input (a missing checkpoint or input, an unknown suffix, a checkpoint that is neither a work
directory nor a ``.pth``, a corrupt file) ends with one ``error: …`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cptrans_jax import video_io
from cptrans_jax.metrics import _format_duration, save_png
from cptrans_jax.models.generator import Generator
from cptrans_jax.sharding import (
    DATA_AXIS,
    batch_sharding,
    local_data_mesh,
    place_replicated,
    replicated,
)

Params = Any

DEFAULT_FPS = 25.0
MIN_SIDE = 16  # G's two downsamplings and its reflect paddings need at least this many pixels
OUTPUT_SIZES = ("model", "input")
_MAX_LISTED = 8


class TranslateError(ValueError):
    """Bad input to ``translate``: the message says what was expected."""


# -------------------------------------------------------------------------------- checkpoints


def _resolve_orbax(path: str) -> tuple[str, str | None, int]:
    """(state item directory, config.json path or None, step) of an Orbax checkpoint path."""
    path = os.path.abspath(path)
    name = os.path.basename(path)
    if os.path.isdir(os.path.join(path, "state")) and name.isdigit():
        step_dir = path
        workdir = os.path.dirname(os.path.dirname(path))
    else:
        if os.path.isdir(os.path.join(path, "checkpoints")):
            workdir, ckpt_dir = path, os.path.join(path, "checkpoints")
        elif name == "checkpoints":
            workdir, ckpt_dir = os.path.dirname(path), path
        else:
            raise TranslateError(
                f"checkpoint {path} is neither a training work directory (with checkpoints/), "
                "a checkpoint <workdir>/checkpoints/<step> nor an authors' generator .pth file"
            )
        # Orbax renames a step directory into place only when it is complete, so a digits-only
        # name with a state item is a finished checkpoint (unfinished ones carry a tmp suffix).
        steps = sorted(
            int(n)
            for n in os.listdir(ckpt_dir)
            if n.isdigit() and os.path.isdir(os.path.join(ckpt_dir, n, "state"))
        )
        if not steps:
            raise TranslateError(f"no finished checkpoint in {ckpt_dir}")
        step_dir = os.path.join(ckpt_dir, str(steps[-1]))
    config = os.path.join(workdir, "config.json")
    return (
        os.path.join(step_dir, "state"),
        config if os.path.isfile(config) else None,
        int(os.path.basename(step_dir)),
    )


def _architecture_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """ngf and n_blocks from flat G param shapes (``model_1/kernel`` is 7×7×3×ngf)."""
    if "model_1/kernel" not in shapes:
        raise TranslateError("checkpoint has no generator parameter g_params/model_1/kernel")
    blocks = {k.split("/")[0] for k in shapes if "/conv_block_1/" in k}
    return {"ngf": int(shapes["model_1/kernel"][-1]), "n_blocks": len(blocks)}


def _restore_g_params(state_dir: str, config_path: str | None) -> tuple[Generator, Params]:
    import orbax.checkpoint as ocp
    from etils import epath

    handler = ocp.PyTreeCheckpointHandler()
    try:
        metadata = handler.metadata(epath.Path(state_dir)).tree
    except Exception as e:  # noqa: BLE001 - Orbax raises many kinds for an unreadable store
        raise TranslateError(f"{state_dir}: not a readable Orbax checkpoint: {e}") from e
    if "g_params" not in metadata:
        raise TranslateError(f"{state_dir}: the checkpoint has no g_params (not a train state)")
    on_disk = {
        k: (tuple(v.shape), np.dtype(v.dtype))
        for k, v in ocp.tree.to_flat_dict(metadata["g_params"], sep="/").items()
    }
    if config_path is not None:
        with open(config_path) as f:
            model = json.load(f).get("model", {})
        try:
            arch = {"ngf": int(model["ngf"]), "n_blocks": int(model["n_blocks"])}
        except (KeyError, TypeError, ValueError) as e:
            raise TranslateError(f"{config_path}: no model.ngf / model.n_blocks ({e})") from e
    else:
        arch = _architecture_from_shapes({k: s for k, (s, _) in on_disk.items()})
    generator = Generator(**arch)
    expected = jax.eval_shape(
        generator.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    )["params"]
    expected = {
        k: (tuple(v.shape), np.dtype(v.dtype))
        for k, v in ocp.tree.to_flat_dict(expected, sep="/").items()
    }
    if expected != on_disk:

        def show(entry: tuple | None) -> str:
            return "missing" if entry is None else f"{entry[0]} {entry[1]}"

        diff = sorted(
            f"{k}: checkpoint {show(on_disk.get(k))}, expected {show(expected.get(k))}"
            for k in expected.keys() | on_disk.keys()
            if expected.get(k) != on_disk.get(k)
        )
        more = f" ... and {len(diff) - _MAX_LISTED} more" if len(diff) > _MAX_LISTED else ""
        raise TranslateError(
            f"{state_dir}: G parameters do not match a Generator(ngf={arch['ngf']}, "
            f"n_blocks={arch['n_blocks']}) (from {config_path or 'the parameter shapes'}): "
            + "; ".join(diff[:_MAX_LISTED])
            + more
        )
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {
        "g_params": jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding),
            metadata["g_params"],
        )
    }
    restored = handler.restore(
        epath.Path(state_dir),
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
        ),
    )
    handler.close()
    return generator, restored["g_params"]


def load_generator(checkpoint: str | os.PathLike) -> tuple[Generator, Params, str]:
    """(G, its params, a description) from a work directory, a step directory or a ``.pth``."""
    path = os.fspath(checkpoint)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if os.path.isfile(path):
        if os.path.splitext(path)[1].lower() not in (".pth", ".pt"):
            raise TranslateError(
                f"checkpoint {path} is neither a training work directory nor an authors' "
                "generator .pth file"
            )
        from cptrans_jax.convert import load_torch_generator

        generator, params = load_torch_generator(path)
        return generator, params, f"authors' generator {path}"
    state_dir, config_path, step = _resolve_orbax(path)
    generator, params = _restore_g_params(state_dir, config_path)
    return generator, params, f"{os.path.dirname(state_dir)} (step {step})"


# ---------------------------------------------------------------------------------- inference


@functools.lru_cache(maxsize=8)
def make_infer_fn(generator: Generator, mesh: jax.sharding.Mesh) -> Callable:
    """``jit((params, uint8 (B, H, W, 3)) → uint8 (B, H, W, 3))``, batch split over ``data``.

    Any H, W ≥ 16: they are reflect-padded (bottom, right) up to multiples of 4 and the output
    is cropped back. Cached per (generator, mesh), so repeated calls reuse one compilation.
    """
    rep, data = replicated(mesh), batch_sharding(mesh)

    def infer(params: Params, frames: jax.Array) -> jax.Array:
        h, w = frames.shape[1], frames.shape[2]
        # ToTensor then Normalize(0.5, 0.5), as the authors' test loader.
        x = (frames.astype(jnp.float32) / 255.0 - 0.5) / 0.5
        x = jnp.pad(x, ((0, 0), (0, -h % 4), (0, -w % 4), (0, 0)), mode="reflect")
        y = generator.apply({"params": params}, x)[:, :h, :w]
        # SPEC §5 (= metrics.to_uint8): clamp, (x+1)/2·255, truncate.
        y = jnp.clip(y, -1.0, 1.0)
        return ((y + 1.0) / 2.0 * 255.0).astype(jnp.uint8)

    return jax.jit(infer, in_shardings=(rep, data), out_shardings=data)


# ------------------------------------------------------------------------------ input/output


@dataclasses.dataclass
class _Source:
    frames: Iterator[np.ndarray]
    total: int | None
    fps: float | None
    kind: str  # "video" | "folder" | "image"


def _open_source(path: str) -> _Source:
    if not os.path.exists(path):
        raise FileNotFoundError(f"input {path} does not exist")
    if os.path.isdir(path):
        files = video_io.list_frames(path)
        if not files:
            raise TranslateError(
                f"input folder {path} has no frames (expected "
                f"{' '.join(video_io.IMAGE_SUFFIXES)} files directly inside it)"
            )
        return _Source((video_io.read_image(f) for f in files), len(files), None, "folder")
    if video_io.is_video(path):
        info = video_io.video_info(path)
        return _Source(video_io.read_video(path), info.num_frames, info.fps, "video")
    if video_io.is_image(path):
        return _Source(iter([video_io.read_image(path)]), 1, None, "image")
    raise TranslateError(
        f"input {path}: unknown suffix; expected a video "
        f"({' '.join(video_io.VIDEO_SUFFIXES)}), an image "
        f"({' '.join(video_io.IMAGE_SUFFIXES)}) or a folder of frames"
    )


class _Sink:
    """Where translated frames go: a video, a folder of PNGs or one image."""

    def __init__(self, output: str, source: _Source, input_path: str, fps: float | None):
        suffix = os.path.splitext(output)[1].lower()
        self.output = output
        self._video = None
        self._name = None
        if os.path.isdir(output) or not suffix:
            self.kind = "folder"
            if source.kind == "image":
                stem = os.path.splitext(os.path.basename(input_path))[0]
                self._name = os.path.join(output, f"{stem}.png")
        elif video_io.is_video(output):
            self.kind = "video"
            self._video = video_io.VideoWriter(output, fps or source.fps or DEFAULT_FPS)
        elif video_io.is_image(output):
            if source.kind != "image":
                raise TranslateError(
                    f"output {output} is an image file but the input is a {source.kind}; give a "
                    "folder (no suffix) or a video file as the output"
                )
            self.kind = "image"
            self._name = output
        else:
            raise TranslateError(
                f"output {output}: unknown suffix {suffix!r}; expected a folder (no suffix), a "
                f"video ({' '.join(video_io.VIDEO_SUFFIXES)}) or, for one input image, an image "
                f"({' '.join(video_io.IMAGE_SUFFIXES)})"
            )
        if self.kind == "folder":
            os.makedirs(output, exist_ok=True)

    def write(self, index: int, frame: np.ndarray) -> None:
        if self._video is not None:
            self._video.write(frame)
        elif self.kind == "folder" and self._name is None:
            save_png(os.path.join(self.output, f"{index:06d}.png"), frame)
        elif self.kind == "image" and not self._name.lower().endswith(".png"):
            from PIL import Image

            Image.fromarray(frame).save(self._name)
        else:
            save_png(self._name, frame)

    def close(self) -> None:
        if self._video is not None:
            self._video.close()


class _Progress:
    """``frames 640/1800 | 41.2 frames/s | ETA 0:00:28``, at most every ``every_s`` seconds."""

    def __init__(self, total, print_fn, every_s: float = 5.0, clock=time.monotonic) -> None:
        self.total, self._print, self.every_s, self._clock = total, print_fn, every_s, clock
        self.start = clock()
        self._last = self.start
        self._first: tuple[float, int] | None = None  # after the first batch (compilation)

    def rate(self, done: int) -> float | None:
        now = self._clock()
        if self._first is not None and done > self._first[1] and now > self._first[0]:
            return (done - self._first[1]) / (now - self._first[0])
        return done / (now - self.start) if now > self.start and done else None

    def update(self, done: int) -> None:
        now = self._clock()
        if self._first is None:
            self._first = (now, done)
        if now - self._last < self.every_s:
            return
        self._last = now
        rate = self.rate(done)
        total = self.total if self.total is not None else "?"
        eta = "--"
        if rate and self.total is not None:
            eta = _format_duration(max(self.total - done, 0) / rate)
        speed = f"{rate:.1f} frames/s" if rate else "-- frames/s"
        self._print(f"frames {done}/{total} | {speed} | ETA {eta}")


@dataclasses.dataclass(frozen=True)
class TranslateResult:
    frames: int
    output: str
    seconds: float
    description: str  # which generator was used


def _batches(frames: Iterator[np.ndarray], size: int, batch: int):
    """Yields lists of (preprocessed frame, input (H, W)) of one shape, at most ``batch`` long."""
    group: list[tuple[np.ndarray, tuple[int, int]]] = []
    for frame in frames:
        hw = frame.shape[:2]
        x = video_io.resize_image(frame, size, size) if size else frame
        if min(x.shape[:2]) < MIN_SIDE:
            raise TranslateError(
                f"frame of {x.shape[1]}×{x.shape[0]} is too small for G (at least "
                f"{MIN_SIDE}×{MIN_SIDE}); use --size"
            )
        if group and (x.shape != group[0][0].shape or len(group) == batch):
            yield group
            group = []
        group.append((x, hw))
    if group:
        yield group


def translate(
    checkpoint: str | os.PathLike,
    input: str | os.PathLike,  # noqa: A002 - the CLI's name
    output: str | os.PathLike,
    *,
    size: int = 256,
    output_size: str = "model",
    batch_size: int = 8,
    fps: float | None = None,
    print_fn: Callable[[str], object] = print,
    progress_every_s: float = 5.0,
) -> TranslateResult:
    """Translates ``input`` into ``output`` with the generator of ``checkpoint`` (module doc).

    Raises:
        FileNotFoundError: the checkpoint or the input does not exist.
        ValueError (``TranslateError``, ``CheckpointMismatchError``): anything else wrong with
            the arguments or the files.
    """
    input_path, output = os.fspath(input), os.fspath(output)
    if size < 0 or (size and size < MIN_SIDE):
        raise TranslateError(f"--size must be 0 (native) or at least {MIN_SIDE}, got {size}")
    if output_size not in OUTPUT_SIZES:
        raise TranslateError(f"--output_size must be one of {OUTPUT_SIZES}, got {output_size!r}")
    if batch_size < 1:
        raise TranslateError(f"--batch_size must be >= 1, got {batch_size}")
    if fps is not None and fps <= 0:
        raise TranslateError(f"--fps must be positive, got {fps}")
    if os.path.exists(output) and os.path.abspath(output) == os.path.abspath(input_path):
        raise TranslateError(f"output {output} is the input")
    # Checked before the (slower) checkpoint load so that a typo fails at once.
    source = _open_source(input_path)
    generator, params, description = load_generator(checkpoint)
    sink = _Sink(output, source, input_path, fps)

    mesh = local_data_mesh()
    n_dev = mesh.shape[DATA_AXIS]
    batch = -(-batch_size // n_dev) * n_dev
    infer = make_infer_fn(generator, mesh)
    params = place_replicated(params, mesh)
    data = batch_sharding(mesh)
    print_fn(
        f"translating {input_path} ({source.total or '?'} frames) with G(ngf={generator.ngf}, "
        f"n_blocks={generator.n_blocks}) from {description}; batch {batch} on {n_dev} device(s)"
    )
    progress = _Progress(source.total, print_fn, progress_every_s)
    done = 0

    def emit(pending) -> None:
        nonlocal done
        out, group = pending
        out = np.asarray(out)
        for y, (_, hw) in zip(out[: len(group)], group, strict=False):
            if output_size == "input":
                y = video_io.resize_image(y, hw[1], hw[0])
            sink.write(done, y)
            done += 1
        progress.update(done)

    pending = None
    try:
        for group in _batches(source.frames, size, batch):
            x = np.zeros((batch, *group[0][0].shape), np.uint8)
            for i, (frame, _) in enumerate(group):
                x[i] = frame
            # Dispatch is asynchronous: the previous batch is written while this one runs.
            result = infer(params, jax.device_put(x, data))
            if pending is not None:
                emit(pending)
            pending = (result, group)
        if pending is not None:
            emit(pending)
    finally:
        sink.close()
    if done == 0:
        raise TranslateError(f"input {input_path} has no frames")
    seconds = time.monotonic() - progress.start
    print_fn(
        f"translated {done} frames in {_format_duration(seconds)} "
        f"({done / max(seconds, 1e-9):.1f} frames/s) -> {output}"
    )
    return TranslateResult(done, output, seconds, description)


# ---------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    doc = __doc__.split("Frame-size policy:")[1].split("Inference is")[0].strip()
    doc = doc.replace("``", "")
    parser = argparse.ArgumentParser(
        prog="python -m cptrans_jax.translate",
        description="Translate infrared video / frames / an image into visible with a trained "
        "CPTrans/ROMA generator.",
        epilog="Frame-size policy:\n\n" + doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="training work directory (newest checkpoint), <workdir>/checkpoints/<step>, "
        "or the authors' latest_net_G.pth",
    )
    parser.add_argument(
        "--input", required=True, help="video file, folder of frames (natural order) or image"
    )
    parser.add_argument(
        "--output",
        required=True,
        help="video file (.mp4 .avi .mov .mkv .webm), folder of PNGs (no suffix: 000000.png …), "
        "or an image file for one input image",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=256,
        help="resize frames to SIZE×SIZE (bicubic) before G, like the authors' test "
        "preprocessing (default 256); 0 keeps the native size (padded to multiples of 4)",
    )
    parser.add_argument(
        "--output_size",
        choices=OUTPUT_SIZES,
        default="model",
        help="model: output at the size G ran at (default); input: resized back to each "
        "input frame's size",
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="frames per step, rounded up to a multiple of the device count (default 8)",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="frame rate of a video output (default: the input video's, else 25)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        translate(
            args.checkpoint,
            args.input,
            args.output,
            size=args.size,
            output_size=args.output_size,
            batch_size=args.batch_size,
            fps=args.fps,
        )
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
