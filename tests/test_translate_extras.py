"""translate --fuse and --side_by_side: the fusion and the comparison video of one pass.

A tiny G (ngf 8, one block; an Orbax checkpoint written with ``Checkpointer``, weights from
``test_translate_faults.train_state``) on five 48×40 gray "infrared" frames. The fusion is checked
against ``fusion.fuse_frames`` of the frame G saw and the written translation, and every panel of
the side-by-side frames against the frames they show.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from test_translate_faults import train_state

from cptrans_jax import video_io
from cptrans_jax.checkpoints import Checkpointer
from cptrans_jax.fusion import FusionConfig, fuse_frames
from cptrans_jax.side_by_side import GAP
from cptrans_jax.translate import main, translate
from cptrans_jax.translate_extras import ExtraOptions

_FUSE = jax.jit(fuse_frames, static_argnames="config")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(work directory, folder of five 48×40 gray frames, those frames as RGB)."""
    root = tmp_path_factory.mktemp("extras")
    wd = root / "run"
    with Checkpointer(wd / "checkpoints", save_every=1, keep=1, async_save=False) as ckpt:
        ckpt.save(3, train_state(3), {"data": {}}, force=True)
    (wd / "config.json").write_text(json.dumps({"model": {"ngf": 8, "n_blocks": 1}}))
    yy, xx = np.mgrid[0:40, 0:48]
    rng = np.random.default_rng(0)
    frames = root / "ir"
    frames.mkdir()
    rgb = []
    for t in range(5):
        gray = ((xx * 5 + yy * 3 + 30 * t) % 256 + rng.integers(0, 20, xx.shape)).clip(0, 255)
        Image.fromarray(gray.astype(np.uint8), "L").save(frames / f"ir_{t}.png")
        rgb.append(np.repeat(gray.astype(np.uint8)[..., None], 3, -1))
    return wd, frames, np.stack(rgb)


def read_pngs(folder):
    return np.stack([video_io.read_image(p) for p in video_io.list_frames(folder)])


def quiet(*_):
    pass


def test_fusion_and_labelled_side_by_side_in_one_pass(setup, tmp_path):
    """--size 32: the fusion is that of the 32×32 frame G saw with its written translation; the
    side-by-side frame is a label strip over infrared | gap | translation | gap | fusion."""
    wd, frames, rgb = setup
    lines = []
    translate(
        wd, frames, tmp_path / "out", size=32, batch_size=2, print_fn=lines.append,
        extras=ExtraOptions(
            fuse="ycbcr-max", fuse_output=str(tmp_path / "fused"),
            side_by_side=str(tmp_path / "sbs"), panel_labels="infrared,translation,fusion",
        ),
    )  # fmt: skip
    seen = np.stack([video_io.resize_image(f, 32, 32) for f in rgb])
    translation, fusion = read_pngs(tmp_path / "out"), read_pngs(tmp_path / "fused")
    assert translation.shape == fusion.shape == (5, 32, 32, 3)
    want = np.asarray(_FUSE(jnp.asarray(seen), jnp.asarray(translation), config=FusionConfig()))
    diff = np.abs(fusion.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    # The fusion is not just one of its inputs: brighter than both somewhere, as max(Y) makes it.
    assert (fusion != translation).any() and (fusion != seen).any()

    sbs = read_pngs(tmp_path / "sbs")
    strip = 10 + 5  # a 10 px font (the minimum) and half of it as margin
    assert sbs.shape == (5, strip + 32, 3 * 32 + 2 * GAP, 3)
    body = sbs[:, strip:]
    for k, panel in enumerate((seen, translation, fusion)):
        left = k * (32 + GAP)
        np.testing.assert_array_equal(body[:, :, left : left + 32], panel)
        # Each label is white text on the black strip above its own panel.
        assert (sbs[0, :strip, left : left + 32] > 200).any()
    assert (body[:, :, 32 : 32 + GAP] == 0).all() and (body[:, :, 68 : 68 + GAP] == 0).all()
    assert (sbs[:, :strip] == sbs[:1, :strip]).all()  # one strip for every frame
    assert lines[-3:-1] == [
        f"wrote the fusion (ycbcr-max) of 5 frames -> {tmp_path / 'fused'}",
        f"wrote the side-by-side of 5 frames -> {tmp_path / 'sbs'}",
    ]


def test_cli_side_by_side_gif_at_the_input_size(setup, tmp_path):
    """--output_size input --side_by_side X.gif, no fusion: two 48×40 panels, the input frame
    itself and the translation resized back, as a 5-frame GIF at --fps."""
    wd, frames, rgb = setup
    gif = tmp_path / "sbs.gif"
    argv = [
        "--checkpoint", str(wd), "--input", str(frames), "--output", str(tmp_path / "out"),
        "--size", "32", "--batch_size", "2", "--output_size", "input",
        "--side_by_side", str(gif), "--fps", "5",
    ]  # fmt: skip
    assert main(argv) == 0
    translation = read_pngs(tmp_path / "out")
    assert translation.shape == (5, 40, 48, 3)
    with Image.open(gif) as image:
        assert (image.n_frames, image.size) == (5, (2 * 48 + GAP, 40))
        assert image.info["duration"] == 200 and image.info["loop"] == 0
        got = []
        for k in range(5):
            image.seek(k)
            got.append(np.asarray(image.convert("RGB")))
    # Each frame is the composite reduced to its own 256-colour palette (gif_writer).
    for k in range(5):
        composite = np.concatenate([rgb[k], np.zeros((40, GAP, 3), np.uint8), translation[k]], 1)
        palette = np.asarray(Image.fromarray(composite).quantize(colors=256).convert("RGB"))
        np.testing.assert_array_equal(got[k], palette)
    assert (got[4] != composite).any()  # (a palette loses colours)
    assert sorted(os.listdir(tmp_path)) == ["out", "sbs.gif"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fuse_output", "F"], "--fuse_output needs --fuse METHOD (one of ycbcr-max, "),
        (["--fuse", "laplacian"], "--fuse needs somewhere to write the fusion: give "),
        (["--panel_labels", "a,b"], "--panel_labels needs --side_by_side PATH"),
        (
            ["--side_by_side", "S", "--fuse", "ycbcr-max", "--panel_labels", "a,b"],
            "--panel_labels has 2 label(s) ('a,b') but the side-by-side video has 3 panels",
        ),
        (["--side_by_side", "OUT"], "--side_by_side {tmp}/OUT is also --output; expected a "),
        (["--fuse", "ycbcr-weighted", "--fuse_weight", "2", "--fuse_output", "F"], "--fuse: "),
    ],
)
def test_inconsistent_options_are_one_error_before_any_work(
    setup, tmp_path, capsys, extra, message
):
    wd, frames, _ = setup
    paths = {"F": str(tmp_path / "F"), "S": str(tmp_path / "S.mp4"), "OUT": str(tmp_path / "OUT")}
    argv = ["--checkpoint", str(wd), "--input", str(frames), "--output", paths["OUT"]]
    assert main([*argv, *(paths.get(a, a) for a in extra)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + message.format(tmp=tmp_path)) and err.count("\n") == 1
    assert os.listdir(tmp_path) == []
