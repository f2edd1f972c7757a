"""The demo's paired truth, its layout score (cptrans_jax/demo_quality) and the demo ViT."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from cptrans_jax import demo_quality as dq
from cptrans_jax.data.demo import DemoSource, infrared_clips, visible_clips
from cptrans_jax.data.demo_truth import LABELS, LANE, OBJECT, ROAD, SKY, paired_truth

S = 32  # small frames: the whole file runs in seconds


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_training_stream_is_unchanged_by_the_paired_truth():
    # Hashes of the stream as it is since the infrared got its cold sky (the truth's horizon
    # follows it); the visible side is as it was before the truth existed (commit 142d607).
    # Rendering the truth reads the same layouts, and must not change a single training value.
    src = DemoSource(frame_size=32, clip_length=2, global_batch_size=4, epoch_size=16, seed=5)
    batches = [src.next_batch() for _ in range(5)]
    assert _sha(*(b[k] for b in batches for k in ("A", "B"))) == (
        "793452f9f32915cf89a38ff98438bc2a2abc45b010cb83da7548324acb56888c"
    )
    idx = np.arange(3)
    assert _sha(infrared_clips(0, idx, 64, 1)) == (
        "b1ce0cc133b9d8c86b44c48f3e9dbe0c7e1c7abd29a7ac28e0c2382911d4be68"
    )
    assert _sha(visible_clips(0, idx, 64, 1)) == (
        "beed374c72d7360bf0b79afd9b01f6f1354b502852b558385e7ca07236421679"
    )


def test_paired_truth_follows_the_infrared_layout():
    idx = np.arange(6)
    ir = infrared_clips(2, idx, S, 2)[..., 0]
    frames, labels = paired_truth(2, idx, S, 2)
    assert frames.shape == (6, 2, S, S, 3) and labels.shape == (6, 2, S, S)
    assert frames.dtype == np.float32 and frames.min() >= -1.0 and frames.max() <= 1.0
    # The infrared's hottest pixels (object cores) are objects; the road is warmer than the
    # background off it; the sky is on top.
    assert np.all(labels[ir > 0.3] == OBJECT)
    road, off = ir[labels == ROAD].mean(), ir[(labels == SKY)].mean()
    assert road > off + 0.08
    assert np.all(labels[:, :, 0] != ROAD)
    assert set(np.unique(labels)) == set(range(len(LABELS)))
    # Objects move between frames, as in the infrared.
    assert np.any(labels[:, 0] != labels[:, 1])
    again_frames, again = paired_truth(2, idx[3:], S, 2)
    np.testing.assert_array_equal(again, labels[3:])
    np.testing.assert_array_equal(again_frames, frames[3:])


def test_read_labels_reads_every_prototype_as_its_class():
    colours = np.array([c for c, _ in dq.PROTOTYPES], np.float32)[None] * 2 - 1
    np.testing.assert_array_equal(dq.read_labels(colours)[0], [k for _, k in dq.PROTOTYPES])
    with pytest.raises(ValueError, match="RGB"):
        dq.read_labels(np.zeros((4, 4, 2)))


def test_truth_scores_one_and_a_shifted_layout_scores_lower():
    _, truth, labels = dq.held_out_scenes(0, 8, S)
    exact = dq.score(truth, truth, labels)
    assert exact["miou"] == 1.0 and exact["l1"] == 0.0 and exact["psnr"] > 100
    assert all(v == 1.0 for v in exact["iou"].values())
    down2 = dq.score(np.roll(truth, 2, axis=1), truth, labels)
    down6 = dq.score(np.roll(truth, 6, axis=1), truth, labels)
    assert 1.0 > down2["miou"] > down6["miou"]
    assert down2["l1"] < down6["l1"] and down2["psnr"] > down6["psnr"]


def test_a_constant_translation_scores_the_baseline():
    mean = dq.mean_day_frame(0, S)
    result = dq.score_translator(lambda x: np.broadcast_to(mean, x.shape), 0, S, 8)
    t, b = result["translation"], result["baseline"]
    assert t["miou"] == pytest.approx(b["miou"]) and t["l1"] == pytest.approx(b["l1"], rel=1e-3)
    # The baseline knows the day domain's average layout, not this scene's: no objects, a far
    # from perfect road, but the sky (every horizon is near the mean one) mostly right.
    assert b["iou"]["object"] < 0.05 and b["iou"]["road"] < 0.6 and b["iou"]["sky"] > 0.7
    assert 0.25 < b["miou"] < 0.5
    assert "lane mark" in dq.format_report({"checkpoint": "x", **result})
    assert "read as" not in dq.format_report({"checkpoint": "x", **result})
    assert "read as" in dq.format_report({"checkpoint": "x", **result}, with_confusion=True)
    assert np.sum(t["confusion"]) == 8 * S * S  # every pixel of the 8 scenes, once


def test_confusion_counts_truth_rows_against_read_columns():
    truth = np.array([[SKY, SKY, ROAD, ROAD], [OBJECT, OBJECT, OBJECT, LANE]])
    pred = np.array([[SKY, ROAD, ROAD, ROAD], [OBJECT, ROAD, OBJECT, ROAD]])
    c = dq.confusion(pred, truth)
    assert c.shape == (len(LABELS), len(LABELS)) and c.sum() == truth.size
    assert c[SKY, SKY] == 1 and c[SKY, ROAD] == 1 and c[ROAD, ROAD] == 2
    assert c[OBJECT, OBJECT] == 2 and c[OBJECT, ROAD] == 1 and c[LANE, ROAD] == 1
    # The diagonal over (row + column - diagonal) is layout_iou's per-class IoU.
    _, iou = dq.layout_iou(pred, truth)
    for k, name in enumerate(LABELS):
        union = c[k].sum() + c[:, k].sum() - c[k, k]
        assert (iou[name] is None) == (union == 0)
        if union:
            assert iou[name] == pytest.approx(c[k, k] / union)
    text = dq.format_confusion(c)
    assert "66.7%" in text.splitlines()[1 + OBJECT]  # 2 of the 3 object pixels
    with pytest.raises(ValueError, match="differ in shape"):
        dq.confusion(pred[:1], truth)


def test_layout_iou_pools_pixels_and_skips_absent_classes():
    truth = np.array([[SKY, SKY, ROAD, ROAD]])
    pred = np.array([[SKY, ROAD, ROAD, LANE]])
    miou, per_class = dq.layout_iou(pred, truth)
    assert per_class["sky"] == 0.5 and per_class["road"] == pytest.approx(1 / 3)
    assert per_class["lane mark"] == 0.0 and per_class["object"] is None
    assert miou == pytest.approx((0.5 + 1 / 3 + 0.0) / 3)
    with pytest.raises(ValueError, match="shape"):
        dq.layout_iou(pred, truth[:, :2])


def _workdir(tmp_path, name="demo") -> str:
    os.makedirs(tmp_path / "checkpoints")
    data = {"name": name, "seed": 0, "frame_size": S}
    (tmp_path / "config.json").write_text(json.dumps({"data": data}))
    return str(tmp_path)


def test_command_errors_are_one_line(tmp_path, capsys):
    from cptrans_jax import evaluate

    assert dq.main([str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert evaluate.main(["--demo", _workdir(tmp_path)]) == 2  # the alias
    assert "no finished checkpoint" in capsys.readouterr().err
    other = tmp_path / "irvi"
    other.mkdir()
    assert dq.main([_workdir(other, "irvi")]) == 2
    assert "not the demo" in capsys.readouterr().err
    assert dq.main([str(tmp_path), "--scenes", "0"]) == 2
    assert "--scenes must be >= 1" in capsys.readouterr().err


def test_demo_vit_makes_the_structural_loss_see_the_layout():
    # The cause of the demo's input-independent output, and its fix: under the trainer's
    # random ViT, L_cs scores the paired truth worse than the constant mean day frame; under
    # the committed demo ViT (python -m cptrans_jax.demo_vit --out configs/demo_vit.npz) the
    # truth is best, then the mean frame, then another scene's layout.
    import jax

    from cptrans_jax.convert import init_vit_params, load_vit_params
    from cptrans_jax.demo_vit import cs_check, demo_vit_config

    config = demo_vit_config()
    random = cs_check(init_vit_params(config, jax.random.key(1)), config, scenes=4)
    assert random["truth"] > random["mean day frame"]
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "demo_vit.npz")
    trained = cs_check(load_vit_params(path, config), config, scenes=4)
    assert trained["truth"] < 0.7 * trained["mean day frame"]
    assert trained["mean day frame"] < trained["another scene's truth"]
    assert trained["truth"] < 0.5 * trained["truth shifted 8 px"]


def test_the_truths_horizon_is_where_the_infrareds_cold_sky_ends():
    from cptrans_jax.data.demo_scenes import infrared_layouts

    idx = np.arange(40, 56)
    p, _ = infrared_layouts(3, idx, 64, 1)
    infrared = infrared_clips(3, idx, 64, 1)[:, 0, :, :, 0]
    _, labels = paired_truth(3, idx, 64, 1)
    # A row's median over columns ignores the few object pixels in it.
    rows = np.median(infrared, axis=2)  # (n, S)
    sky_rows = np.median(labels[:, 0], axis=2) == SKY
    for i in range(len(idx)):
        h = int(np.argmin(sky_rows[i]))  # the first row below the truth's horizon
        assert h == int(np.ceil(p["horizon"][i] - 0.5)) and 16 <= h <= 29
        assert sky_rows[i, :h].all() and not sky_rows[i, h:].any()
        # The step there is the layout's sky_cold (0.12..0.20), far above the noise's 0.03.
        step = rows[i, h] - rows[i, h - 1]
        assert abs(step - p["sky_cold"][i]) < 0.03, (i, step, p["sky_cold"][i])
        assert np.all(np.abs(np.diff(rows[i, : h - 1])) < 0.05)  # no other step in the sky


def test_token_targets_are_patch_fractions():
    from cptrans_jax.demo_vit import token_targets
    from cptrans_jax.models import ViTConfig

    labels = np.zeros((1, 64, 64), np.int64)
    labels[0, 32:] = ROAD
    labels[0, :, :3] = OBJECT
    for config, g in ((ViTConfig(64, 8, 16, 6, 2, 32), 8), (ViTConfig(96, 16, 16, 6, 2, 32), 6)):
        t = token_targets(labels, config, cells=1)  # as is, and resized to 96 (nearest)
        assert t.shape == (1, g * g, 1, 4)  # sky, verge, road (lane marks included), object
        np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
        grid = t[0, :, 0].reshape(g, g, 4)
        assert np.all(grid[: g // 2, 1:, 0] == 1.0) and np.all(grid[g // 2 :, 1:, 2] == 1.0)
        assert np.allclose(grid[:, 0, 3], 3 / (64 / g), atol=0.07)  # 3 px of a column of patches
        assert np.all(grid[..., 1] == 0.0)  # no verge drawn


def test_token_targets_in_cells_say_where_in_the_patch():
    from cptrans_jax.demo_vit import token_targets
    from cptrans_jax.models import ViTConfig

    labels = np.zeros((1, 64, 64), np.int64)
    labels[0, 34:] = ROAD  # 2 px into the fifth row of patches
    labels[0, :, :3] = OBJECT  # 3 px into the first column of patches
    t = token_targets(labels, ViTConfig(64, 8, 16, 6, 2, 32), cells=4)
    assert t.shape == (1, 64, 16, 4)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
    # Patch (4, 1): its top row of 2-px cells is sky, the three below road.
    cells = t[0, 4 * 8 + 1].reshape(4, 4, 4)
    assert np.all(cells[0, :, 0] == 1.0) and np.all(cells[1:, :, 2] == 1.0)
    # Patch (0, 0): the first cell column is all object, the second half object (column 2).
    cells = t[0, 0].reshape(4, 4, 4)
    assert np.all(cells[:, 0, 3] == 1.0) and np.all(cells[:, 1, 3] == 0.5)
    assert np.all(cells[:, 2:, 3] == 0.0)
    # Averaged over its cells a patch's target is the whole patch's fraction.
    whole = token_targets(labels, ViTConfig(64, 8, 16, 6, 2, 32), cells=1)
    np.testing.assert_allclose(t.mean(axis=2), whole[:, :, 0], rtol=1e-6)
    with pytest.raises(ValueError, match="cells must divide the patch size 8"):
        token_targets(labels, ViTConfig(64, 8, 16, 6, 2, 32), cells=3)


def test_cell_colours_are_the_mean_colour_of_each_cell():
    from cptrans_jax.demo_vit import cell_colours
    from cptrans_jax.models import ViTConfig

    config = ViTConfig(64, 8, 16, 6, 2, 32)
    frames = np.zeros((1, 64, 64, 3), np.float32)
    frames[0, :, 9, 0] = 1.0  # red in column 9: the second pixel of cell 0 of patch column 1
    frames[0, 60:, :, 2] = -1.0  # blue off in the last 4 rows: the bottom 2 cell rows
    c = cell_colours(frames, config, cells=4)
    assert c.shape == (1, 64, 16, 3)
    cells = c[0].reshape(8, 8, 4, 4, 3)  # patch row, patch col, cell row, cell col, RGB
    assert np.all(cells[:, 1, :, 0, 0] == 0.5) and np.all(cells[:, 1, :, 1:, 0] == 0.0)
    assert np.all(cells[:, [0, *range(2, 8)], :, :, 0] == 0.0)
    assert np.all(cells[7, :, 2:, :, 2] == -1.0) and np.all(cells[7, :, :2, :, 2] == 0.0)
    assert np.all(cells[:7, :, :, :, 2] == 0.0)
    with pytest.raises(ValueError, match="need 64-px frames"):
        cell_colours(frames[:, :32, :32], config, cells=4)


def test_cs_check_blur_is_a_normalised_gaussian_with_replicated_edges():
    from cptrans_jax.demo_vit import _blur

    frames = np.zeros((1, 16, 16, 3), np.float32)
    frames[:, :, 8:] = 1.0  # a vertical step between columns 7 and 8
    out = _blur(frames, 1.5)
    np.testing.assert_allclose(out[:, :, :2], 0.0, atol=1e-6)  # 6+ px from the step: untouched
    np.testing.assert_allclose(out[:, :, -2:], 1.0, atol=1e-6)  # and the edges replicate
    np.testing.assert_allclose(out[:, :, 7] + out[:, :, 8], 1.0, rtol=1e-6)  # symmetric step
    # Column 8 gets the weight of the kernel's offsets 0..5 (radius ⌈3σ⌉ = 5), renormalised.
    k = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    np.testing.assert_allclose(out[0, 0, 8, 0], k[5:].sum() / k.sum(), rtol=1e-5)
    assert np.all(np.diff(out[0, 0, :, 0]) >= 0)


def test_demo_config_loads_the_demo_vit_it_was_made_for():
    import importlib.util

    from cptrans_jax.config import vit_config
    from cptrans_jax.demo_vit import demo_vit_config

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py")
    spec = importlib.util.spec_from_file_location("demo_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    assert vit_config(c) == demo_vit_config()
    assert os.path.isfile(c.model.vit_weights) and c.model.vit_weights.endswith("demo_vit.npz")


def test_demo_vit_patch_size_option(capsys):
    from cptrans_jax import demo_vit

    assert demo_vit.demo_vit_config() == demo_vit.demo_vit_config(8)
    finer = demo_vit.demo_vit_config(4)
    assert (finer.patch_size, finer.grid, finer.num_patches) == (4, 16, 256)
    with pytest.raises(ValueError, match="patch_size must divide"):
        demo_vit.demo_vit_config(6)
    # 4-px patches hold the default 4 cells a side (1-px cells); 2-px patches cannot, and the
    # command says so in one line before training anything.
    with pytest.raises(SystemExit) as e:
        demo_vit.main(["--patch_size", "2", "--check"])
    assert e.value.code == 2
    assert "--patch_size must be a multiple of --cells (4), got 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        demo_vit.main(["--patch_size", "6", "--check"])
    assert e.value.code == 2
    assert "--patch_size must divide the 64-px frame, got 6" in capsys.readouterr().err
