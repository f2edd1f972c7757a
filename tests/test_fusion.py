"""cptrans_jax.fusion (hand values on small arrays) and python -m cptrans_jax.fuse (round trips
through videos and folders, count mismatches, atomic outputs)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cptrans_jax import video_io
from cptrans_jax.fuse import FuseError, fuse, main
from cptrans_jax.fusion import (
    METHODS,
    FusionConfig,
    collapse_pyramid,
    fuse_frames,
    laplacian_pyramid,
    pyramid_levels,
)

RNG = np.random.default_rng(0)
COLOUR = RNG.integers(0, 256, (2, 21, 30, 3)).astype(np.uint8)


# Jitted: op by op, the pyramid's many small ops each compile and take seconds in all.
_FUSE = jax.jit(fuse_frames, static_argnames="config")


def fused(ir, vis, method, **kw):
    return np.asarray(_FUSE(jnp.asarray(ir), jnp.asarray(vis), config=FusionConfig(method, **kw)))


@pytest.mark.parametrize("method", METHODS)
def test_fusing_a_frame_with_itself_returns_it(method):
    np.testing.assert_array_equal(fused(COLOUR, COLOUR, method), COLOUR)


def test_black_visible_gives_the_infrared_luminance():
    gray = RNG.integers(0, 256, (1, 8, 8)).astype(np.uint8)
    ir = np.repeat(gray[..., None], 3, -1)
    black = np.zeros_like(ir)
    np.testing.assert_array_equal(fused(ir, black, "ycbcr-max"), ir)
    # w · Y_ir, rounded: 0.25 · g.
    want = np.round(0.25 * gray.astype(np.float64)).astype(np.uint8)
    got = fused(ir, black, "ycbcr-weighted", ir_weight=0.25)
    np.testing.assert_array_equal(got, np.repeat(want[..., None], 3, -1))
    # A colour infrared frame contributes its luminance (BT.601), not its colour.
    colour_ir = np.zeros((1, 2, 2, 3), np.uint8) + np.array([200, 100, 50], np.uint8)
    y = 0.299 * 200 + 0.587 * 100 + 0.114 * 50  # 124.4
    assert (fused(colour_ir, np.zeros_like(colour_ir), "ycbcr-max") == round(y)).all()


def test_hand_values_keep_the_visible_colour():
    """Infrared gray 200, visible (50, 100, 150): Y_vis = 0.299·50 + 0.587·100 + 0.114·150 =
    90.75; the fused colour is the visible one shifted by Y_fused − Y_vis in every channel."""
    ir = np.full((1, 16, 16, 3), 200, np.uint8)
    vis = np.zeros_like(ir) + np.array([50, 100, 150], np.uint8)
    # max: Y = 200 → +109.25 → (159.25, 209.25, 259.25) → (159, 209, 255 clipped).
    assert (fused(ir, vis, "ycbcr-max") == [159, 209, 255]).all()
    # weighted 0.5: Y = 145.375 → +54.625 → (104.625, 154.625, 204.625) → (105, 155, 205).
    assert (fused(ir, vis, "ycbcr-weighted") == [105, 155, 205]).all()
    # Laplacian of two constant frames: no detail, the bases averaged → also Y = 145.375.
    assert (fused(ir, vis, "laplacian") == [105, 155, 205]).all()
    # A darker infrared under max keeps the visible frame as it is.
    assert (fused(np.full_like(ir, 60), vis, "ycbcr-max") == [50, 100, 150]).all()


def test_laplacian_takes_the_stronger_detail():
    """A bright infrared dot on a flat visible frame of the same mean: the dot's band-pass
    detail is the infrared's, the flat base the average — so the dot survives at half its
    contrast above the (averaged) background, and a flat visible frame contributes nothing."""
    ir = np.full((1, 32, 32, 3), 100, np.uint8)
    ir[0, 16, 16] = 255
    vis = np.full_like(ir, 100)
    out = fused(ir, vis, "laplacian")[0, ..., 0].astype(int)
    weighted = fused(ir, vis, "ycbcr-weighted")[0, ..., 0].astype(int)
    assert out[16, 16] > weighted[16, 16] + 40  # sharper than a plain 50/50 blend
    assert abs(out[0, 0] - 100) <= 1 and abs(out[31, 31] - 100) <= 1


def test_pyramid_collapses_back_exactly():
    y = jnp.asarray(RNG.uniform(0, 255, (2, 37, 50)).astype(np.float32))
    assert pyramid_levels(37, 50, 4) == 3  # 37 → 19 → 10 → 5; a 4th level would be 3 px

    @jax.jit
    def round_trip(v):
        pyramid = laplacian_pyramid(v, 4)
        return pyramid, collapse_pyramid(pyramid)

    pyramid, back = round_trip(y)
    assert [p.shape[1:] for p in pyramid] == [(37, 50), (19, 25), (10, 13), (5, 7)]
    np.testing.assert_allclose(np.asarray(back), np.asarray(y), atol=1e-3)


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="unknown fusion method 'average'; expected one of"):
        FusionConfig("average")
    with pytest.raises(ValueError, match=r"infrared weight must be in \[0, 1\], got 1.5"):
        FusionConfig("ycbcr-weighted", ir_weight=1.5)


# ------------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A 5-frame 48×40 gray infrared mp4 and PNGs, its 32×32 colour 'translation' as mp4 and
    as PNGs."""
    root = tmp_path_factory.mktemp("fuse")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:40, 0:48]
    ir = [
        np.repeat(((xx * 4 + yy * 2 + 20 * t) % 256).astype(np.uint8)[..., None], 3, -1)
        for t in range(5)
    ]
    # Smooth colour frames with a little noise, which video codecs keep to a few levels.
    y32, x32 = np.mgrid[0:32, 0:32]
    vis = [
        (
            np.stack([x32 * 6 + 10 * t, y32 * 5 + 20, 200 - x32 * 3], -1)
            + rng.integers(0, 8, (32, 32, 3))
        )
        .clip(0, 255)
        .astype(np.uint8)
        for t in range(5)
    ]
    video_io.write_video(root / "ir.mp4", ir, fps=10)
    video_io.write_video(root / "vis.mp4", vis, fps=10)
    (root / "vis").mkdir()
    for k, frame in enumerate(vis):
        Image.fromarray(frame).save(root / "vis" / f"{k:06d}.png")
    (root / "ir").mkdir()
    for k, frame in enumerate(ir):
        Image.fromarray(frame[..., 0]).save(root / "ir" / f"f_{k}.png")
    return root


def read_pngs(folder):
    return np.stack([video_io.read_image(p) for p in video_io.list_frames(folder)])


def expected(ir_frames, vis_frames, config, size="infrared"):
    out = []
    for a, b in zip(ir_frames, vis_frames, strict=True):
        if size == "infrared":
            b = video_io.resize_image(b, a.shape[1], a.shape[0])
        else:
            a = video_io.resize_image(a, b.shape[1], b.shape[0])
        out.append(np.asarray(_FUSE(jnp.asarray(a), jnp.asarray(b), config=config)))
    return np.stack(out)


def test_folders_to_folder_exact(media, tmp_path):
    out = tmp_path / "fused"
    lines = []
    config = FusionConfig("laplacian", levels=3)
    result = fuse(
        media / "ir", media / "vis", out, config=config, batch_size=2, print_fn=lines.append
    )
    assert result.frames == 5 and sorted(os.listdir(out)) == [f"{k:06d}.png" for k in range(5)]
    want = expected(read_pngs(media / "ir"), read_pngs(media / "vis"), config)
    np.testing.assert_array_equal(read_pngs(out), want)
    assert want.shape == (5, 40, 48, 3)  # the infrared's size (--size infrared)
    assert lines[-1].startswith("fused 5 frames (laplacian) in ")


def test_one_image_pair_to_an_image(media, tmp_path):
    """An image pair gives an image, fused at the infrared's size (the default)."""
    ir, vis = media / "ir" / "f_2.png", media / "vis" / "000002.png"
    fuse(ir, vis, tmp_path / "one.png", batch_size=2, print_fn=lambda *_: None)
    want = expected([video_io.read_image(ir)], [video_io.read_image(vis)], FusionConfig())
    np.testing.assert_array_equal(video_io.read_image(tmp_path / "one.png"), want[0])
    assert want.shape == (1, 40, 48, 3)


def test_video_round_trip(media, tmp_path):
    """Two videos in, a video out: what is read back is the fusion of the decoded inputs, up to
    the codec's loss; --size visible fuses at the translation's 32×32."""
    out = tmp_path / "fused.mp4"
    assert (
        main(
            [
                "--infrared",
                str(media / "ir.mp4"),
                "--visible",
                str(media / "vis.mp4"),
                "--output",
                str(out),
                "--method",
                "ycbcr-weighted",
                "--ir_weight",
                "0.7",
                "--size",
                "visible",
                "--batch_size",
                "3",
            ]
        )
        == 0
    )
    got = np.stack(list(video_io.read_video(out)))
    ir = np.stack(list(video_io.read_video(media / "ir.mp4")))
    vis = np.stack(list(video_io.read_video(media / "vis.mp4")))
    want = expected(ir, vis, FusionConfig("ycbcr-weighted", ir_weight=0.7), size="visible")
    assert got.shape == want.shape == (5, 32, 32, 3)
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 4
    assert video_io.video_info(out).fps == 10  # the infrared video's


def test_mismatched_frame_counts_are_one_error_and_no_output(media, tmp_path, capsys):
    short = tmp_path / "short"
    short.mkdir()
    for k in range(3):
        (short / f"{k:06d}.png").write_bytes((media / "vis" / f"{k:06d}.png").read_bytes())
    out = tmp_path / "out.mp4"
    # Folders: found before any work.
    assert (
        main(["--infrared", str(media / "ir"), "--visible", str(short), "--output", str(out)]) == 2
    )
    assert capsys.readouterr().err == (
        f"error: --infrared {media / 'ir'} has 5 frames but --visible {short} has 3; expected "
        "the same number of frames (they are matched by index)\n"
    )
    # A video against a folder: found when the folder runs out, and nothing is left.
    assert (
        main(["--infrared", str(media / "ir.mp4"), "--visible", str(short), "--output", str(out)])
        == 2
    )
    assert capsys.readouterr().err == (
        f"error: --visible {short} has 3 frames but --infrared {media / 'ir.mp4'} has more; "
        "expected the same number of frames (they are matched by index)\n"
    )
    assert os.listdir(tmp_path) == ["short"]


def test_bad_arguments_are_one_line(media, tmp_path, capsys):
    cases = [
        (
            [
                "--infrared",
                str(tmp_path / "none.mp4"),
                "--visible",
                str(media / "vis"),
                "--output",
                str(tmp_path / "o"),
            ],
            f"--infrared {tmp_path / 'none.mp4'} does not exist",
        ),
        (
            [
                "--infrared",
                str(media / "ir"),
                "--visible",
                str(media / "vis"),
                "--output",
                str(tmp_path / "o.txt"),
            ],
            "--output",
        ),
        (
            [
                "--infrared",
                str(media / "ir"),
                "--visible",
                str(media / "vis"),
                "--output",
                str(media / "vis"),
            ],
            "is the --visible input",
        ),
        (
            [
                "--infrared",
                str(media / "ir"),
                "--visible",
                str(media / "vis"),
                "--output",
                str(tmp_path / "o"),
                "--method",
                "ycbcr-weighted",
                "--ir_weight",
                "2",
            ],
            "infrared weight must be in [0, 1]",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == []
    with pytest.raises(FuseError, match="--size must be one of infrared, visible"):
        fuse(media / "ir", media / "vis", tmp_path / "o", size="both")
