"""python -m cptrans_jax.translate: checkpoints of both kinds, every input and output kind.

Tiny generators on 32–64 px frames; the reference is the Flax generator applied to the same
frames, quantised with ``metrics.to_uint8`` (and, for the authors' file, PyTorch itself).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image
from torch_reference import TorchGenerator

from cptrans_jax import video_io
from cptrans_jax.checkpoints import Checkpointer
from cptrans_jax.metrics import to_uint8
from cptrans_jax.models import Generator
from cptrans_jax.steps import TrainState, adam
from cptrans_jax.translate import (
    GeneratorCheckpointError,
    TranslateError,
    load_generator,
    main,
    translate,
)

ROOT = os.path.dirname(os.path.dirname(__file__))


def normalise(frames):
    return (np.asarray(frames, np.float32) / 255.0 - 0.5) / 0.5


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("translate")


@pytest.fixture(scope="module")
def clip(tmp):
    """A 5-frame 64×48 mp4 and its decoded frames (the input translate sees)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    frames = [
        (np.stack([xx * 3 + 9 * t, yy * 5, 128 + 0 * xx], -1) + rng.integers(0, 40, (48, 64, 3)))
        .clip(0, 255)
        .astype(np.uint8)
        for t in range(5)
    ]
    path = tmp / "clip.mp4"
    video_io.write_video(path, frames, fps=10)
    return path, np.stack(list(video_io.read_video(path)))


def resized(frames, w, h):
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])


_APPLY = {}  # one jitted G.apply per generator, so equal shapes compile once


def reference(generator, params, frames):
    """to_uint8(G(normalised frames)), reflect-padded to multiples of 4 and cropped back."""
    h, w = frames.shape[1:3]
    x = np.pad(normalise(frames), ((0, 0), (0, -h % 4), (0, -w % 4), (0, 0)), mode="reflect")
    apply = _APPLY.setdefault(generator, jax.jit(generator.apply))
    y = apply({"params": params}, jnp.asarray(x))
    return to_uint8(np.asarray(y)[:, :h, :w])


def assert_close(got, want):
    """Equal up to one level where XLA's rounding differs at a quantisation boundary."""
    assert got.shape == want.shape
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def read_pngs(folder):
    return np.stack([video_io.read_image(p) for p in video_io.list_frames(folder)])


@pytest.fixture(scope="module")
def workdir(tmp):
    """A work directory as the trainer leaves it: config.json + an Orbax TrainState."""
    generator = Generator(ngf=8, n_blocks=1)
    # Ordinary-scale random weights, N(0, 1/fan_in) (the SPEC init, gain 0.02, would make every
    # output ≈ 127), drawn with numpy: compiling G's initialiser takes seconds.
    shapes = jax.eval_shape(generator.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    rng = np.random.default_rng(1)
    g_params = jax.tree.map(
        lambda s: jnp.asarray(
            rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1, s.shape),
            jnp.float32,
        ),
        shapes["params"],
    )
    d_params = {"linear1": {"kernel": jnp.ones((4, 4)), "bias": jnp.zeros(4)}}
    tx = adam(1e-4)
    state = TrainState(jnp.asarray(7, jnp.int32), g_params, d_params, tx.init(g_params), None)
    state = state.replace(d_opt_state=tx.init(d_params))
    wd = tmp / "run"
    with Checkpointer(wd / "checkpoints", save_every=1, keep=3) as ckpt:
        ckpt.save(7, state, {"data": {}}, force=True)
    (wd / "config.json").write_text(json.dumps({"model": {"ngf": 8, "n_blocks": 1}}))
    return wd, generator, jax.tree.map(np.asarray, g_params)


@pytest.fixture(scope="module")
def authors_pth(tmp):
    torch.manual_seed(0)
    net = TorchGenerator(ngf=8, n_blocks=2).eval()
    path = tmp / "latest_net_G.pth"
    torch.save(net.state_dict(), path)
    return path, net


def test_workdir_video_to_video_and_png_folder(workdir, clip, tmp):
    wd, generator, params = workdir
    path, frames = clip
    want = reference(generator, params, resized(frames, 32, 32))
    lines = []
    result = translate(
        wd, path, tmp / "out_frames", size=32, batch_size=2, print_fn=lines.append,
        progress_every_s=0,
    )  # fmt: skip
    assert result.frames == 5 and "step 7" in result.description
    assert_close(read_pngs(tmp / "out_frames"), want)
    assert sorted(os.listdir(tmp / "out_frames"))[-1] == "000004.png"
    assert any(line.startswith("frames 4/5 | ") and "ETA" in line for line in lines)
    assert lines[-1].startswith("translated 5 frames")

    translate(wd, path, tmp / "out.mp4", size=32, batch_size=2, fps=5, print_fn=lambda *_: None)
    info = video_io.video_info(tmp / "out.mp4")
    assert (info.num_frames, info.width, info.height, info.fps) == (5, 32, 32, 5.0)
    back = np.stack(list(video_io.read_video(tmp / "out.mp4"))).astype(float)
    # H.264 in yuv420p keeps colour at half resolution: compare 2×2 block means (measured 3.5).
    blocks = lambda v: v.reshape(5, 16, 2, 16, 2, 3).mean(axis=(2, 4))  # noqa: E731
    assert np.abs(blocks(back) - blocks(want)).mean() < 6


def test_step_dir_native_size_gray_frames_and_one_image(workdir, tmp):
    """--size 0 on 62×46 gray frames (padded to 64×48 and cropped back); an image input."""
    wd, generator, params = workdir
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (3, 46, 62), dtype=np.uint8)
    folder = tmp / "gray_frames"
    folder.mkdir()
    for i, g in zip([10, 2, 1], gray, strict=True):  # natural order: 1, 2, 10
        Image.fromarray(g, "L").save(folder / f"ir_{i}.png")
    rgb = np.repeat(gray[[2, 1, 0]][..., None], 3, axis=-1)
    want = reference(generator, params, rgb)
    translate(wd / "checkpoints" / "7", folder, tmp / "native", size=0, print_fn=lambda *_: None)
    assert_close(read_pngs(tmp / "native"), want)

    # One image: to a .png path, and resized back to its input size. (Batch and reference
    # shapes as in the first test: nothing new to compile.)
    translate(
        wd, folder / "ir_1.png", tmp / "one.png", size=32, output_size="input", batch_size=2,
        print_fn=lambda *_: None,
    )  # fmt: skip
    small = reference(generator, params, resized(rgb[[0] * 5], 32, 32))[0]
    assert_close(video_io.read_image(tmp / "one.png"), resized(small[None], 62, 46)[0])


def test_authors_generator_pth(authors_pth, clip, tmp):
    path, net = authors_pth
    generator, params, _ = load_generator(path)
    assert (generator.ngf, generator.n_blocks) == (8, 2)
    _, frames = clip
    x = resized(frames, 32, 32)
    translate(path, clip[0], tmp / "pth_out", size=32, batch_size=4, print_fn=lambda *_: None)
    got = read_pngs(tmp / "pth_out")
    assert_close(got, reference(generator, params, x))
    with torch.no_grad():
        y = net(torch.from_numpy(normalise(x)).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert_close(got, to_uint8(y.numpy()))


def test_bfloat16_compute_dtype(workdir, clip, tmp):
    """--compute_dtype bfloat16: G computes in bfloat16 from the same float32 params; the frames
    stay within a few levels of float32's (measured on CPU: max 6, mean 0.69 levels of 255;
    bounds ~3.5×)."""
    wd, generator, params = workdir
    path, frames = clip
    want = reference(generator, params, resized(frames, 32, 32))
    lines = []
    translate(wd, path, tmp / "bf16_frames", size=32, batch_size=2, compute_dtype="bfloat16",
              print_fn=lines.append)  # fmt: skip
    assert "computing in bfloat16" in lines[0]
    diff = np.abs(read_pngs(tmp / "bf16_frames").astype(int) - want.astype(int))
    print(f"bfloat16 vs float32 frames: max {diff.max()}, mean {diff.mean():.2f} levels")
    assert diff.max() <= 20 and diff.mean() <= 2.5
    with pytest.raises(TranslateError, match="--compute_dtype must be one of"):
        translate(wd, path, tmp / "o", compute_dtype="float16")


def test_bad_arguments_are_named(workdir, clip, tmp, capsys):
    wd, _, _ = workdir
    with pytest.raises(FileNotFoundError, match="checkpoint .*nope does not exist"):
        translate(tmp / "nope", clip[0], tmp / "o")
    with pytest.raises(GeneratorCheckpointError, match="neither a training work directory"):
        load_generator(tmp)  # a folder, but no checkpoints/ in it
    with pytest.raises(TranslateError, match="unknown suffix '.txt'"):
        translate(wd, clip[0], tmp / "o.txt")
    with pytest.raises(TranslateError, match="image file but the input is a video"):
        translate(wd, clip[0], tmp / "o.png")
    bad = tmp / "bad_run"
    (bad / "checkpoints").mkdir(parents=True)
    os.symlink(wd / "checkpoints" / "7", bad / "checkpoints" / "7")
    (bad / "config.json").write_text(json.dumps({"model": {"ngf": 16, "n_blocks": 1}}))
    with pytest.raises(
        GeneratorCheckpointError, match=r"ngf=16.*model_1/kernel: checkpoint \(7, 7, 3, 8\) "
    ):
        load_generator(bad)
    assert (
        main(["--checkpoint", str(wd), "--input", str(tmp / "missing.mp4"), "--output", "o"]) == 2
    )
    assert capsys.readouterr().err == f"error: input {tmp / 'missing.mp4'} does not exist\n"


def test_cli_error_exit(tmp, clip):
    """The one subprocess: a bad checkpoint exits 2 with one error line and no traceback."""
    (tmp / "notes.txt").write_text("x")
    proc = subprocess.run(
        [sys.executable, "-m", "cptrans_jax.translate", "--checkpoint", str(tmp / "notes.txt"),
         "--input", str(clip[0]), "--output", str(tmp / "cli_out")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: checkpoint") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
