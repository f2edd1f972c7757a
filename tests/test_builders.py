"""TFDS builders and the manual-folder layouts (issue 5): counts, frame identity, bad input."""

import builtins
import contextlib
import errno
import importlib.util
import io
import os
import resource
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from data_fixtures import (
    FRAME_VIDEOS,
    PAIR_FILES,
    frame_pixels,
    frame_value,
    frames_tree,
    pair_tree,
    triplet_tree,
)
from PIL import Image

from cptrans_jax.data import builders
from cptrans_jax.data.layouts import DataLayoutError, FrameError, natural_key, read_frame
from cptrans_jax.data.pipeline import clip_table

tfds.disable_progress_bar()
ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "data_prep" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def records_of(builder, split):
    """(domain, video, frame, red value) of every record, sorted."""
    source = builder.as_data_source(split)
    rows = []
    for i in range(len(source)):
        r = source[i]
        video = r["video"].decode() if isinstance(r["video"], bytes) else r["video"]
        rows.append((int(r["domain"]), video, int(r["frame_index"]), int(r["image"][0, 0, 0])))
        assert r["image"].shape == (8, 8, 3) and r["image"].dtype == np.uint8
    return sorted(rows)


def test_pair_files(tmp_path):
    lines = []
    b = builders.build(
        "infraredcity_lite",
        "monitor",
        "packed",
        pair_tree(tmp_path / "manual"),
        tmp_path / "data",
        print_fn=lines.append,
    )
    assert b.info.splits["train"].num_examples == 2 * (PAIR_FILES["trainA"] + PAIR_FILES["trainB"])
    assert b.info.splits["test"].num_examples == 2 * (PAIR_FILES["testA"] + PAIR_FILES["testB"])
    want = sorted(
        (d, ("sub/" if i == 0 else "") + f"{i:04d}", j, frame_value(d, i, i + j))
        for d, folder in ((0, "trainA"), (1, "trainB"))
        for i in range(PAIR_FILES[folder])
        for j in range(2)
    )
    assert records_of(b, "train") == want
    assert "train: 10 infrared, 6 visible frames indexed" in lines
    # One clip per pair file: its two frames, left then right.
    table = builders.frame_table(b, "train")
    clips = clip_table(table, 0, 2, packed=True)
    source = b.as_data_source("train")
    values = [[int(source[int(r)]["image"][0, 0, 0]) for r in clip] for clip in clips]
    assert sorted(values) == [[frame_value(0, i, i), frame_value(0, i, i + 1)] for i in range(5)]
    assert len(clip_table(table, 0, 1, packed=True)) == 5  # T=1: the left frame of each file
    assert len(clip_table(table, 0, 3, packed=True)) == 0
    # Visible frames keep their colour.
    visible = next(source[i] for i in range(len(source)) if source[i]["domain"] == 1)
    assert visible["image"][0, 0, 1] == 128


def test_triplet_files(tmp_path):
    b = builders.build(
        "irvi",
        "traffic",
        "packed",
        triplet_tree(tmp_path / "manual"),
        tmp_path / "data",
        print_fn=lambda *_: None,
    )
    assert [b.info.splits[s].num_examples for s in ("train", "test")] == [12, 6]
    table = builders.frame_table(b, "test")
    source = b.as_data_source("test")
    (clip,) = clip_table(table, 0, 3, packed=True)
    assert [int(source[int(r)]["image"][0, 0, 0]) for r in clip] == [0, 1, 2]


def test_frame_folders_and_cached_table(tmp_path):
    b = builders.build(
        "infraredcity_adverse",
        "rain",
        "frames",
        frames_tree(tmp_path / "manual"),
        tmp_path / "data",
        print_fn=lambda *_: None,
    )
    assert b.builder_config.name == "rain_frames"
    want = sorted(
        (d, f"video{v}", f, frame_value(d, v, f))
        for d, folder in ((0, "trainA"), (1, "trainB"))
        for v, n in enumerate(FRAME_VIDEOS[folder])
        for f in range(n)
    )
    assert records_of(b, "train") == want  # f_10 and f_11 after f_9: natural order
    table = builders.frame_table(b, "train")
    assert (Path(b.data_dir) / "frame_table-train.npz").exists()
    source = b.as_data_source("train")
    for T in (1, 2, 3):
        clips = clip_table(table, 0, T, packed=False)
        assert len(clips) == sum(n - T + 1 for n in FRAME_VIDEOS["trainA"])
        for clip in clips:  # adjacent frames of one video
            rows = [source[int(r)] for r in clip]
            assert len({r["video"] for r in rows}) == 1
            assert [int(r["frame_index"]) for r in rows] == list(
                range(int(rows[0]["frame_index"]), int(rows[0]["frame_index"]) + T)
            )
    # A rebuilt builder object reads the cached table, which equals a fresh scan.
    cached = builders.frame_table(
        builders.make_builder("infraredcity_adverse", "rain", "frames", tmp_path / "data"), "train"
    )
    for key in table:
        np.testing.assert_array_equal(cached[key], table[key])


def test_natural_order():
    names = ["f_10.png", "f_2.png", "f_1.png", "g_0.png"]
    assert sorted(names, key=natural_key) == ["f_1.png", "f_2.png", "f_10.png", "g_0.png"]


def test_frame_reading_modes(tmp_path):
    gray16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    out = read_frame(tmp_path / "g16.png")
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[..., 0], np.round(gray16 * (255 / 65535)).astype(np.uint8))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    Image.fromarray(frame_pixels(1, 2, 3)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_frame(tmp_path / "rgb.png"), frame_pixels(1, 2, 3))


def _build_expecting(tmp_path, layout, exc, match, **kw):
    scene = "monitor"
    with pytest.raises(exc, match=match):
        builders.build(
            "infraredcity_lite",
            scene,
            layout,
            tmp_path / "manual",
            tmp_path / "data",
            print_fn=lambda *_: None,
            **kw,
        )


def test_missing_and_empty_folders(tmp_path):
    _build_expecting(tmp_path, "packed", DataLayoutError, "missing folder .*manual")
    pair_tree(tmp_path / "manual")
    shutil.rmtree(tmp_path / "manual/monitor/testB")
    (tmp_path / "manual/monitor/testB").mkdir()
    (tmp_path / "manual/monitor/testB/notes.txt").write_text("x")
    _build_expecting(tmp_path, "packed", DataLayoutError, r"testB holds no image files")
    # Nothing half-built is left to be mistaken for a data set.
    assert not builders.make_builder(
        "infraredcity_lite", "monitor", "packed", tmp_path / "data"
    ).is_prepared()


@pytest.mark.parametrize(
    "damage, match",
    [
        ("truncate", r"trainA/0003\.png: cannot be decoded .* corrupt or truncated"),
        ("rgba", r"trainA/0003\.png: has 4 channels \(mode RGBA\); expected a gray"),
        ("wide", r"trainA/0003\.png: is 24×8; a packed file of 2 frames must be 2·H wide"),
    ],
)
def test_bad_packed_file_is_named(tmp_path, damage, match):
    pair_tree(tmp_path / "manual")
    path = tmp_path / "manual/monitor/trainA/0003.png"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "rgba":
        Image.fromarray(np.zeros((8, 16, 4), np.uint8)).save(path)
    else:
        Image.fromarray(np.zeros((8, 24), np.uint8)).save(path)
    _build_expecting(tmp_path, "packed", FrameError, match)


def test_skip_corrupt_counts_and_logs(tmp_path):
    pair_tree(tmp_path / "manual")
    path = tmp_path / "manual/monitor/trainB/0001.png"
    path.write_bytes(path.read_bytes()[:40])
    lines = []
    b = builders.build(
        "infraredcity_lite",
        "monitor",
        "packed",
        tmp_path / "manual",
        tmp_path / "data",
        skip_corrupt=True,
        print_fn=lines.append,
    )
    assert b.info.splits["train"].num_examples == 2 * (5 + 3 - 1)
    assert "train: 14 frames from 8 videos; skipped 1 corrupt files" in lines
    assert any(line.startswith("  skipped ") and "trainB/0001.png" in line for line in lines)


def test_frame_of_another_size_in_a_video(tmp_path):
    frames_tree(tmp_path / "manual")
    bad = tmp_path / "manual/rain/trainA/video1/f_5.png"
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(bad)
    with pytest.raises(FrameError, match=r"video1/f_5\.png: is 10×8 but the frames before it"):
        builders.build(
            "infraredcity_adverse",
            "rain",
            "frames",
            tmp_path / "manual",
            tmp_path / "data",
            print_fn=lambda *_: None,
        )


def test_validate_reports_every_problem(tmp_path, capsys):
    validate = load_script("validate")
    pair_tree(tmp_path / "manual")
    for name in ("trainA/0001.png", "testA/0001.png"):
        p = tmp_path / "manual/monitor" / name
        p.write_bytes(p.read_bytes()[:40])
    Image.fromarray(np.zeros((8, 24), np.uint8)).save(tmp_path / "manual/monitor/trainB/0002.png")
    (tmp_path / "manual/monitor/trainB/README").write_text("x")
    args = ["--dataset", "infraredcity_lite", "--scene", "monitor", "--manual_dir"]
    assert validate.main([*args, os.fspath(tmp_path / "manual")]) == 1
    out = capsys.readouterr().out
    assert out.count("problem: ") == 3
    for name in ("trainA/0001.png", "testA/0001.png", "trainB/0002.png"):
        assert name in out
    assert "note: " in out and "README: not an image file" in out
    assert "trainA: 8 frames" in out  # the four good pair files of trainA
    assert validate.main([*args, os.fspath(tmp_path / "nowhere")]) == 1
    assert "problem: missing folder" in capsys.readouterr().out


def test_validate_groups_a_repeated_problem_and_names_the_fix(tmp_path, capsys):
    """A tree of plain frames checked as packed files (no --layout frames): every file has the
    same problem, printed as one count with three examples, then the fix."""
    validate = load_script("validate")
    frames_tree(tmp_path / "manual")
    for i in range(5):  # enough non-image files to be grouped too
        (tmp_path / f"manual/rain/trainA/video0/notes{i}.txt").write_text("x")
    args = ["--dataset", "infraredcity_adverse", "--scene", "rain", "--manual_dir"]
    assert validate.main([*args, os.fspath(tmp_path / "manual")]) == 1
    lines = capsys.readouterr().out.splitlines()
    files = sum(sum(v) for v in FRAME_VIDEOS.values())  # one file per frame
    scene = tmp_path / "manual/rain"
    assert lines[:4] == [f"{scene / d}: 0 frames" for d in ("trainA", "trainB", "testA", "testB")]
    assert lines[4] == "note: 5 non-image files, e.g.:"
    assert lines[8] == "  … and 2 more"
    assert lines[9] == (
        f"problem: {files} files are not packed files of 2 frames (2·H wide, H high), e.g.:"
    )
    assert lines[10] == (
        f"  {scene}/trainA/video0/f_0.png: is 8×8; a packed file of 2 frames must be 2·H wide "
        "and H high (e.g. 512×256). Is this a plain frame? Use the 'frames' layout for those."
    )
    assert [line.split(":")[0] for line in lines[11:13]] == [
        f"  {scene}/trainA/video0/f_1.png",
        f"  {scene}/trainA/video0/f_2.png",
    ]
    assert lines[13] == f"  … and {files - 3} more"
    assert lines[14:] == [
        f"{files} problem(s): {scene} cannot be built as packed yet; likely fix: no file holds 2 "
        "frames side by side, so these look like folders of plain frames: run again with "
        "--layout frames (and build with --layout frames)"
    ]
    # and with that fix it passes (the notes stay, listed as before)
    assert validate.main([*args, os.fspath(tmp_path / "manual"), "--layout", "frames"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"ok: {scene} matches the frames layout of infraredcity_adverse"
    )


def test_truncated_video_keeps_its_frames_visibly(tmp_path, capsys):
    """A video cut short: video_to_frames keeps the decodable frames, says so (counts, exit 1)
    and marks the folder; validate and build then report the marker instead of taking the
    frames silently; a complete conversion into the folder removes the marker."""
    from cptrans_jax import video_io

    frames_tree(tmp_path / "manual")
    noisy = np.random.default_rng(0).integers(0, 256, (12, 48, 64, 3), dtype=np.uint8)
    video_io.write_video(tmp_path / "whole" / "cut.avi", noisy, fps=25)
    data = (tmp_path / "whole" / "cut.avi").read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.avi").write_bytes(data[: len(data) // 2])  # 6 of 12 frames decode
    trainA = tmp_path / "manual/rain/trainA"
    assert load_script("video_to_frames").main([str(tmp_path / "in"), str(trainA)]) == 1
    err = capsys.readouterr().err.splitlines()
    reason = (
        f"{tmp_path / 'in' / 'cut.avi'}: video is truncated or corrupt: the container announces "
        "12 frames, only 6 could be decoded"
    )
    assert err == [
        f"warning: {reason}; kept its 6 frames in {trainA / 'cut'}, marked by "
        f"{trainA / 'cut' / 'INCOMPLETE.txt'} (validate.py and build.py report it)",
        "0 of 1 videos complete, 1 incomplete (frames kept, marked), 0 skipped",
    ]
    assert sorted(os.listdir(trainA / "cut")) == [f"{i:06d}.png" for i in range(6)] + [
        "INCOMPLETE.txt"
    ]
    warning = (
        f"warning: {trainA / 'cut'}: incomplete video: {reason}; kept the first 6 decoded "
        "frames as 6 PNGs"
    )
    args = ["--dataset", "infraredcity_adverse", "--scene", "rain", "--layout", "frames"]
    assert load_script("validate").main([*args, "--manual_dir", str(tmp_path / "manual")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert warning in out and not any(line.startswith("note: ") for line in out)
    assert f"{trainA}: {4 + 12 + 6} frames" in out  # the fixture's two videos and the 6 kept
    assert out[-1] == (
        f"ok: {tmp_path / 'manual/rain'} matches the frames layout of infraredcity_adverse; "
        "1 frame folder(s) from incomplete videos (warnings above)"
    )
    lines = []
    builders.build(
        "infraredcity_adverse",
        "rain",
        "frames",
        tmp_path / "manual",
        tmp_path / "data",
        print_fn=lines.append,
    )
    assert "train: 25 frames from 4 videos; 1 incomplete videos" in lines
    assert f"  {warning}" in lines
    # The whole video converted into the same folder: complete now, the marker goes.
    assert load_script("video_to_frames").main([str(tmp_path / "whole"), str(trainA)]) == 0
    assert len(os.listdir(trainA / "cut")) == 12
    assert capsys.readouterr().err == ""


def test_build_script(tmp_path, capsys):
    build = load_script("build")
    pair_tree(tmp_path / "manual")
    args = ["--dataset", "infraredcity_lite", "--scene", "monitor"]
    dirs = ["--manual_dir", os.fspath(tmp_path / "manual"), "--data_dir", os.fspath(tmp_path / "d")]
    assert build.main([*args, *dirs]) == 0
    assert "built infraredcity_lite/monitor" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        build.main(["--dataset", "infraredcity_lite", "--scene", "beach", *dirs])
    assert e.value.code == 2
    assert "has scenes city_clearday" in capsys.readouterr().err


# ------------------------------------------------------------------ the data dir under faults

BUILD_ARGS = ["--dataset", "infraredcity_lite", "--scene", "monitor"]
EXPECTED = "expected a folder you can write to (it is created if missing)"


def run_build(tmp_path, data_dir):
    build = load_script("build")
    if not (tmp_path / "manual").exists():
        pair_tree(tmp_path / "manual")
    dirs = ["--manual_dir", os.fspath(tmp_path / "manual"), "--data_dir", os.fspath(data_dir)]
    return build.main([*BUILD_ARGS, *dirs])


def test_build_script_data_dir_is_a_file(tmp_path, capsys):
    data = tmp_path / "data"
    data.write_text("not a folder")
    assert run_build(tmp_path, data) == 2
    assert capsys.readouterr().err == f"error: data dir {data} is a file; {EXPECTED}\n"
    assert run_build(tmp_path, data / "sub") == 2
    assert capsys.readouterr().err == (
        f"error: data dir {data / 'sub'} is inside {data}, which is a file; {EXPECTED}\n"
    )
    assert data.read_text() == "not a folder" and sorted(os.listdir(tmp_path)) == ["data", "manual"]


@contextlib.contextmanager
def read_only(folder, monkeypatch):
    """``folder`` made read-only: a real ``chmod 0o555`` when not root. Root writes through a
    mode, so there the kernel's answer is simulated at the lowest level Python offers: every
    ``os.mkdir``, ``os.open`` for writing and ``open``/``io.open`` for writing of a path inside
    ``folder`` fails with EACCES (TFDS writes through these; only the array_record writer, C++
    and reached only after the check, would not be stopped)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    locked = os.path.abspath(folder)

    def inside(path):
        if isinstance(path, int):
            return False
        path = os.path.abspath(os.fspath(path))
        return path == locked or path.startswith(locked + os.sep)

    def denied(path):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    real_mkdir, real_os_open, real_open = os.mkdir, os.open, io.open

    def mkdir(path, *args, **kwargs):
        if inside(path):
            raise denied(path)
        return real_mkdir(path, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
            raise denied(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if inside(file) and set(mode) & set("wax+"):
            raise denied(file)
        return real_open(file, mode, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "mkdir", mkdir)
        m.setattr(os, "open", os_open)
        m.setattr(io, "open", open_)
        m.setattr(builtins, "open", open_)
        yield


def test_build_script_read_only_data_dir(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    with read_only(data, monkeypatch):
        assert run_build(tmp_path, data) == 2
    assert capsys.readouterr().err == (
        f"error: data dir {data} is not writable (Permission denied); {EXPECTED}, or one where "
        "this scene is already built\n"
    )
    assert os.listdir(data) == []
    # A scene built before is reused from a read-only data dir.
    assert run_build(tmp_path, data) == 0
    capsys.readouterr()
    with read_only(data, monkeypatch):
        assert run_build(tmp_path, data) == 0
    assert "built infraredcity_lite/monitor" in capsys.readouterr().out


def test_build_script_failed_write_leaves_nothing(tmp_path, capsys):
    """A write that fails midway (``ulimit -f``, as a full disk would): TFDS raises its own
    RuntimeError; one line, and nothing of the build is left in the data dir."""
    pair_tree(tmp_path / "manual")
    data = tmp_path / "data"
    (data / "other").mkdir(parents=True)  # something already there stays
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))
    try:
        status = run_build(tmp_path, data)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: building infraredcity_lite/monitor into {data} failed: ")
    assert "File too large" in err and err.endswith("; nothing of it was kept\n")
    assert err.count("\n") == 1
    assert [p.name for p in data.rglob("*")] == ["other"]
    assert not builders.make_builder("infraredcity_lite", "monitor", "packed", data).is_prepared()
