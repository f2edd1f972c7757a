"""Video/image reading and writing (cptrans_jax.video_io) and data_prep/video_to_frames.py."""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from cptrans_jax import video_io

ROOT = os.path.dirname(os.path.dirname(__file__))


def smooth_clip(n=5, h=48, w=64):
    """Smooth moving gradients: little for a lossy codec to lose."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return [
        np.stack(
            [xx * 3 + 8 * t, yy * 4 + 20, np.full_like(xx, 60 + 30 * t)],
            axis=-1,
        )
        .clip(0, 255)
        .astype(np.uint8)
        for t in range(n)
    ]


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_write_then_read_video(tmp_path, suffix):
    frames = smooth_clip()
    path = tmp_path / f"clip{suffix}"
    assert video_io.write_video(path, iter(frames), fps=12) == 5
    assert video_io.is_video(path) and not video_io.is_video(tmp_path / "a.png")
    info = video_io.video_info(path)
    assert (info.num_frames, info.fps, info.width, info.height) == (5, 12.0, 64, 48)
    assert info.codec == ("h264" if suffix == ".mp4" else "mpeg4")
    back = list(video_io.read_video(path))
    assert len(back) == 5
    for a, b in zip(frames, back, strict=True):
        assert b.shape == (48, 64, 3) and b.dtype == np.uint8
        assert np.abs(a.astype(int) - b).mean() < 4  # lossy, but close


def test_odd_sizes_are_padded_and_gray_frames_accepted(tmp_path):
    gray = [np.full((47, 63), 10 * t + 50, np.uint8) for t in range(3)]
    video_io.write_video(tmp_path / "g.mkv", gray, fps=25)
    info = video_io.video_info(tmp_path / "g.mkv")
    assert (info.width, info.height) == (64, 48)  # yuv420p: padded to even sides
    back = list(video_io.read_video(tmp_path / "g.mkv"))
    assert len(back) == 3 and back[0].shape == (48, 64, 3)
    assert np.abs(back[2].astype(int) - 70).max() <= 3
    with pytest.raises(ValueError, match="every frame needs the same size"):
        video_io.write_video(tmp_path / "x.mp4", [gray[0], np.zeros((8, 8), np.uint8)], 25)


def test_list_frames_natural_order(tmp_path):
    for name in ["frame_10.png", "frame_2.png", "frame_1.jpg", "Frame_3.bmp", ".hidden.png"]:
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub.png").mkdir()
    names = [os.path.basename(p) for p in video_io.list_frames(tmp_path)]
    assert names == ["frame_1.jpg", "frame_2.png", "Frame_3.bmp", "frame_10.png"]
    with pytest.raises(FileNotFoundError, match="nope"):
        video_io.list_frames(tmp_path / "nope")


def test_read_image_modes(tmp_path):
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(g, "L").save(tmp_path / "gray.png")
    out = video_io.read_image(tmp_path / "gray.png")
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[..., c], g) for c in range(3))

    rgba = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: alpha is dropped, not composited
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(video_io.read_image(tmp_path / "rgba.png"), rgba[..., :3])

    g16 = np.array([[0, 257 * 100, 65535, 128]], np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")  # a 16-bit gray PNG
    out16 = video_io.read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out16[..., 0], [[0, 100, 255, 0]])
    assert np.array_equal(out16[..., 1], out16[..., 0])


def test_corrupt_files_name_the_file(tmp_path):
    Image.fromarray(smooth_clip(1)[0]).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.png.*expected a complete PNG"):
        video_io.read_image(tmp_path / "cut.png")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match=r"junk\.mp4.*expected a complete \.mp4 file"):
        video_io.read_video(tmp_path / "junk.mp4")
    with pytest.raises(ValueError, match=r"junk\.mp4"):
        video_io.video_info(tmp_path / "junk.mp4")
    # An avi cut in the middle opens; the shortfall is reported when decoding ends.
    noisy = np.random.default_rng(0).integers(0, 256, (12, 48, 64, 3), dtype=np.uint8)
    video_io.write_video(tmp_path / "v.avi", noisy, fps=25)
    data = (tmp_path / "v.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.avi: video is truncated.*announces 12 frames"):
        list(video_io.read_video(tmp_path / "cut.avi"))


def _video_to_frames():
    spec = importlib.util.spec_from_file_location(
        "video_to_frames", os.path.join(ROOT, "data_prep", "video_to_frames.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_video_to_frames_script(tmp_path, capsys):
    script = _video_to_frames()
    (tmp_path / "in" / "day").mkdir(parents=True)
    video_io.write_video(tmp_path / "in" / "day" / "clip.avi", smooth_clip(5), fps=10)
    video_io.write_video(tmp_path / "in" / "b.mp4", smooth_clip(2), fps=10)
    assert script.main([str(tmp_path / "in"), str(tmp_path / "out"), "--every", "2"]) == 0
    assert sorted(os.listdir(tmp_path / "out" / "day" / "clip")) == [
        "000000.png",
        "000001.png",
        "000002.png",
    ]
    assert os.listdir(tmp_path / "out" / "b") == ["000000.png"]
    one = tmp_path / "in" / "b.mp4"
    assert script.main([str(one), str(tmp_path / "o2"), "--size", "32x24"]) == 0
    assert video_io.read_image(tmp_path / "o2" / "b" / "000001.png").shape == (24, 32, 3)
    assert "2 frames" in capsys.readouterr().out
    assert script.main([str(tmp_path / "missing"), str(tmp_path / "o3")]) == 2
    assert capsys.readouterr().err.startswith("error: input")
