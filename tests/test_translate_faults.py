"""translate under faults (issue 10): damaged checkpoints, failures midway, bad output paths.

A work directory of three real Orbax checkpoints (steps 2, 4, 6 of a tiny G, ngf 8, one block;
each step's weights differ) is written once with ``Checkpointer``, and each test damages its
own copy. Translations run 32×32 frames in batches of 2, the program ``test_translate.py``
compiles, so nothing new is compiled but the mixed-size video's second frame size.
"""

import errno
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cptrans_jax import translate as translate_module
from cptrans_jax import video_io
from cptrans_jax.checkpoints import Checkpointer
from cptrans_jax.models import Generator
from cptrans_jax.translate import GeneratorCheckpointError, load_generator, main, translate

STEPS = (2, 4, 6)


def g_params_of(step, n_blocks=1):
    """G's params for ``step``: N(0, 1/fan_in) weights drawn with a seed of the step."""
    shapes = jax.eval_shape(
        Generator(ngf=8, n_blocks=n_blocks).init, jax.random.key(0), jnp.zeros((1, 16, 16, 3))
    )["params"]
    rng = np.random.default_rng(step)
    return jax.tree.map(
        lambda s: rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape).astype(np.float32),
        shapes,
    )


def train_state(step, n_blocks=1):
    """A train-state-like tree: what the translate reader needs is ``g_params``."""
    return {
        "step": np.int32(step),
        "g_params": g_params_of(step, n_blocks),
        "d_params": {"w": np.full((4,), step, np.float32)},
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A work directory with checkpoints 2, 4 and 6, and beside it ``other_size/4``, a step 4
    of a G with two residual blocks."""
    root = tmp_path_factory.mktemp("faults")
    wd = root / "run"
    with Checkpointer(wd / "checkpoints", save_every=1, keep=5, async_save=False) as ckpt:
        for step in STEPS:
            ckpt.save(step, train_state(step), {"data": {"step": step}}, force=True)
    (wd / "config.json").write_text(json.dumps({"model": {"ngf": 8, "n_blocks": 1}}))
    with Checkpointer(root / "other_size", save_every=1, keep=1, async_save=False) as ckpt:
        ckpt.save(4, train_state(4, n_blocks=2), {"data": {}}, force=True)
    return wd


@pytest.fixture
def run(pristine, tmp_path):
    """This test's own copy of the work directory."""
    return shutil.copytree(pristine, tmp_path / "run", symlinks=True)


def damage(step_dir, kind):
    """Damages one checkpoint as a crash, a bad disk or a careless hand would."""
    state = step_dir / "state"
    data_files = sorted((state / "ocdbt.process_0" / "d").iterdir())
    assert data_files  # the arrays' data files that Orbax's OCDBT store reads
    rng = np.random.default_rng(0)
    for f in data_files:
        size = f.stat().st_size
        if kind == "truncated":
            f.write_bytes(f.read_bytes()[: size // 2])
        elif kind == "zeroed":
            f.write_bytes(bytes(size))
        elif kind == "random":
            f.write_bytes(rng.bytes(size))
    if kind == "no_manifest":
        (state / "manifest.ocdbt").unlink()
    elif kind == "no_metadata":
        (state / "_METADATA").unlink()
    elif kind == "no_state":
        shutil.rmtree(state)


def snapshot(folder):
    """Every path under ``folder`` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else ()
        for p in sorted(folder.rglob("*"))
    }


def assert_params(params, step):
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(g_params_of(step)), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)


DAMAGES = ["truncated", "zeroed", "random", "no_manifest", "no_metadata", "no_state"]


# ------------------------------------------------------------------ A: damaged checkpoints


@pytest.mark.parametrize("kind", DAMAGES)
def test_falls_back_past_a_damaged_newest_checkpoint(run, kind, capsys):
    damage(run / "checkpoints" / "6", kind)
    before = snapshot(run)
    generator, params, description = load_generator(run)
    assert description.endswith("checkpoints/4 (step 4)") and generator.ngf == 8
    assert_params(params, 4)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err  # one warning, no traceback or asyncio noise
    assert lines[0].startswith(f"warning: checkpoint 6 in {run / 'checkpoints'} is unreadable (")
    assert lines[0].endswith("); skipped")
    # A reader never renames, deletes or writes anything in a (possibly live) work directory.
    assert snapshot(run) == before


def test_no_readable_checkpoint_is_one_error_line(run, tmp_path, capsys):
    for step, kind in zip(STEPS, ("no_metadata", "no_state", "zeroed"), strict=True):
        damage(run / "checkpoints" / str(step), kind)
    before = snapshot(run)
    image = tmp_path / "ir.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(image)
    argv = ["--checkpoint", str(run), "--input", str(image), "--output", str(tmp_path / "o.png")]
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" in ")[0] for line in lines[:3]] == [
        "warning: checkpoint 6",
        "warning: checkpoint 4",
        "warning: checkpoint 2",
    ]
    assert len(lines) == 4 and lines[3].startswith(
        f"error: no readable checkpoint in {run / 'checkpoints'}: 6 ("
    )
    assert "4 (no state/ folder)" in lines[3] and "2 (metadata: " in lines[3]
    assert snapshot(run) == before
    assert sorted(os.listdir(tmp_path)) == ["ir.png", "run"]  # no output, no temporary file


@pytest.mark.parametrize("kind", ["zeroed", "no_state"])
def test_a_damaged_step_given_explicitly_is_an_error(run, kind):
    damage(run / "checkpoints" / "6", kind)
    with pytest.raises(GeneratorCheckpointError) as info:
        load_generator(run / "checkpoints" / "6")
    message = str(info.value)
    assert message.startswith(f"checkpoint {run / 'checkpoints' / '6'} is unreadable (")
    assert "\n" not in message and "give the work directory" in message
    assert "no state/ folder" in message if kind == "no_state" else "g_params" in message


def test_a_g_of_another_size_is_not_damage(run, pristine, capsys):
    """Damage is skipped, a size mismatch is not: falling back past it would translate with an
    older model than the one asked for. Step 6 is damaged, step 4 holds a G of another size."""
    damage(run / "checkpoints" / "6", "zeroed")
    shutil.rmtree(run / "checkpoints" / "4")
    shutil.copytree(pristine.parent / "other_size" / "4", run / "checkpoints" / "4")
    with pytest.raises(GeneratorCheckpointError) as info:
        load_generator(run)
    assert str(info.value).startswith(
        f"{run / 'checkpoints' / '4' / 'state'}: G parameters do not match a Generator(ngf=8, "
        "n_blocks=1) (from "
    )
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: checkpoint 6 in ")  # 2 not tried


# ------------------------------------------------------------------- B: no partial output


@pytest.fixture
def frames(tmp_path):
    """Six good 32×32 frames and a seventh that does not decode: the failure comes after two
    frames have been written (batches of 2, one in flight)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / f"f_{i}.png")
    (folder / "f_6.png").write_bytes((folder / "f_0.png").read_bytes()[:40])
    return folder


def leftovers(folder):
    return [n for n in os.listdir(folder) if ".partial-" in n]


@pytest.mark.parametrize("output", ["out.mp4", "out_frames", "existing.mp4", "existing_frames"])
def test_failure_midway_leaves_no_output(run, frames, tmp_path, output):
    target = tmp_path / output
    if output == "existing.mp4":
        target.write_bytes(b"an earlier translation")
    elif output == "existing_frames":
        target.mkdir()
        (target / "000000.png").write_bytes(b"an earlier frame")
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"f_6\.png: not a readable image"):
        translate(run, frames, target, size=32, batch_size=2, print_fn=lambda *_: None)
    # Nothing new: no output, no temporary file; an earlier output is as it was.
    assert snapshot(tmp_path) == before
    if output == "existing.mp4":
        assert target.read_bytes() == b"an earlier translation"


def test_mixed_frame_sizes_into_a_video(run, tmp_path, capsys):
    """--size 0 with frames of two sizes into .mp4: one line, and no 2-frame video left."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, width in enumerate((32, 32, 36)):
        Image.fromarray(np.full((32, width), 40 * i, np.uint8)).save(folder / f"f_{i}.png")
    out = tmp_path / "day" / "out.mp4"
    argv = ["--checkpoint", str(run), "--input", str(folder), "--output", str(out)]
    assert main([*argv, "--size", "0", "--batch_size", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"error: output {out}: frame 2 is 36×32 but the video is 32×32; every frame of a video "
        "needs one size (give --size N, or a folder output)\n"
    )
    assert not (tmp_path / "day").exists()  # the folder made for the output is gone too


def test_into_an_existing_folder_frames_are_moved_in(run, frames, tmp_path):
    (frames / "f_6.png").unlink()  # all six frames good
    out = tmp_path / "out_frames"
    out.mkdir()
    for i in range(9):  # an earlier, longer translation
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(out / f"{i:06d}.png")
    (out / "notes.txt").write_text("mine")
    lines = []
    result = translate(run, frames, out, size=32, batch_size=2, print_fn=lines.append)
    assert result.frames == 6 and leftovers(tmp_path) == []
    assert sorted(os.listdir(out)) == [f"{i:06d}.png" for i in range(9)] + ["notes.txt"]
    assert video_io.read_image(out / "000005.png").shape == (32, 32, 3)  # replaced
    assert video_io.read_image(out / "000006.png").shape == (8, 8, 3)  # left as it was
    assert lines[-2] == (
        f"note: {out} also holds 3 frame(s) not from this translation (000006.png … 000008.png), "
        "left as they were"
    )


def test_interrupted_translation_leaves_nothing(run, frames, tmp_path, capsys, monkeypatch):
    (frames / "f_6.png").unlink()
    read, calls = video_io.read_image, []

    def interrupted(path):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return read(path)

    monkeypatch.setattr(video_io, "read_image", interrupted)
    out = tmp_path / "out.mp4"
    argv = ["--checkpoint", str(run), "--input", str(frames), "--output", str(out)]
    assert main([*argv, "--size", "32", "--batch_size", "2"]) == 130
    assert capsys.readouterr().err == f"error: interrupted; nothing written to {out}\n"
    assert not out.exists() and leftovers(tmp_path) == []


# ------------------------------------------------------- B: output paths checked at once


def test_bad_output_paths_fail_before_any_work(run, frames, tmp_path, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the output path was checked")

    monkeypatch.setattr(translate_module, "load_generator", no_load)
    (tmp_path / "a_file").write_text("x")
    video = tmp_path / "clip.mp4"
    video_io.write_video(video, [np.zeros((32, 32, 3), np.uint8)] * 2, fps=5)
    os.symlink(video, tmp_path / "link.mp4")
    image = frames / "f_0.png"
    cases = [
        (frames, tmp_path / "a_file" / "out.mp4", f"{tmp_path / 'a_file'} is a file, not a folder"),
        (frames, tmp_path / "a_file" / "x" / "o", f"{tmp_path / 'a_file'} is a file, not a folder"),
        (frames, tmp_path / "a_file", "is an existing file; a folder output (no suffix) must be"),
        (video, tmp_path / "link.mp4", "is the input"),  # through a symlink
        (image, frames, "is the input"),  # one image into its own folder: OUT/f_0.png
    ]
    for source, output, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)) as info:
            translate(run, source, output, size=32, print_fn=lambda *_: None)
        assert "\n" not in str(info.value)
    assert leftovers(tmp_path) == [] and leftovers(frames) == []
    assert (tmp_path / "a_file").read_text() == "x" and video_io.video_info(video).num_frames == 2


def test_unwritable_output_folder_fails_at_once(run, frames, tmp_path, monkeypatch):
    """As root a read-only folder does not stop writes, so the folder is simulated unwritable:
    ``os.mkdir`` there fails with EACCES, as the kernel would answer for a 0o555 folder."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if os.path.dirname(os.path.abspath(path)) == str(locked):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "mkdir", mkdir)
    else:
        locked.chmod(0o555)
    try:
        with pytest.raises(
            ValueError, match=r"locked/out: cannot write in .*locked \(Permission d"
        ):
            translate(run, frames, locked / "out", size=32, print_fn=lambda *_: None)
    finally:
        locked.chmod(0o755)
    assert os.listdir(locked) == []
