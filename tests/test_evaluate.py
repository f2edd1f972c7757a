"""The evaluate command (issue 6): FID/KID on folders of PNGs, the real-set cache, flicker, errors.

Random Inception weights; images are 48×48 and batches hold 2, the shape test_inception.py
compiles, so the suite compiles the network once. The expected numbers come from the independent
PyTorch network's features put through ``eval_stats``.
"""

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch_inception_reference import random_fid_inception

from cptrans_jax import eval_stats, evaluate
from cptrans_jax.evaluate import EvalInputError, folder_statistics, list_images, main
from cptrans_jax.inception_weights import load_inception_params

KID = {"kid_degree": 3, "kid_subsets": 7, "kid_subset_size": 3}


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "pt_inception.pth"
    torch.save(random_fid_inception(0).state_dict(), path)
    return str(path)


def write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """fake: one clip of 3 frames named so that only a numeric sort orders them, one of them
    grayscale; real: 4 frames in two clips plus a file that is not an image."""
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, (48, 48, 3), dtype=np.uint8)
    fake = [np.clip(base + 20 * t, 0, 255).astype(np.uint8) for t in range(3)]
    fake[1] = np.repeat(fake[1][..., :1], 3, axis=-1)  # saved as mode "L" below
    names = {"frame_1": fake[0], "frame_2": fake[1][..., 0], "frame_10": fake[2]}
    for name, img in names.items():
        write_png(root / "fake" / "clip" / f"{name}.png", img)
    real = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(4)]
    for i, img in enumerate(real):
        write_png(root / "real" / f"clip{i // 2}" / f"{i}.png", img)
    (root / "real" / "notes.txt").write_text("not an image")
    return {
        "root": root,
        "fake": str(root / "fake"),
        "real": str(root / "real"),
        "fake_images": fake,
        "real_images": real,
    }


def reference_features(images):
    net = random_fid_inception(0)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return net(x).numpy().astype(np.float64)


def test_list_images_natural_order(folders):
    names = [os.path.relpath(p, folders["fake"]) for p in list_images(folders["fake"])]
    assert names == [os.path.join("clip", f"frame_{i}.png") for i in (1, 2, 10)]
    assert len(list_images(folders["real"])) == 4  # notes.txt skipped


@pytest.mark.slow  # the full-size Inception network, compiled and run: CI's `-m slow` step
def test_evaluate_end_to_end_and_cache(folders, weights_file, tmp_path, capsys, monkeypatch):
    cache, out = tmp_path / "cache", tmp_path / "result.json"
    argv = [
        "--fake",
        folders["fake"],
        "--real",
        folders["real"],
        "--inception",
        weights_file,
        "--batch_size",
        "2",
        "--cache_dir",
        str(cache),
        "--json",
        str(out),
        "--flicker",
    ]
    argv += [f"--{k}={v}" for k, v in KID.items()]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())

    fake_f = reference_features(folders["fake_images"])
    real_f = reference_features(folders["real_images"])
    fid = eval_stats.fid(fake_f, real_f)
    kid_mean, kid_std = eval_stats.kid(
        fake_f, real_f, degree=3, num_subsets=7, subset_size=3, seed=0
    )
    assert (result["num_fake"], result["num_real"]) == (3, 4) and not result["real_from_cache"]
    assert abs(result["fid"] - fid) <= 1e-4 * fid
    assert abs(result["kid_mean"] - kid_mean) <= 1e-4 * abs(kid_mean)
    assert abs(result["kid_std"] - kid_std) <= 1e-3 * kid_std
    paper = eval_stats.paper_scale(result["fid"], result["kid_mean"])
    assert result["paper_scale"]["FID/100"] == paper["FID/100"]
    assert result["paper_scale"]["KIDx100"] == paper["KIDx100"]
    assert f"FID: {result['fid']:.4f}" in printed
    assert f"FID/100 = {paper['FID/100']:.4f}" in printed and "KIDx100 = " in printed
    assert f"{result['kid_mean']:.6f} ± {result['kid_std']:.6f}" in printed

    # Flicker: mean |Δ| of consecutive frames (natural order) in 0-255 units, per clip.
    f = folders["fake_images"]
    diffs = [np.abs(f[t].astype(int) - f[t - 1].astype(int)).mean() for t in (1, 2)]
    assert result["flicker"]["fake"]["pairs"] == 2
    assert result["flicker"]["fake"]["mean"] == pytest.approx(np.mean(diffs), abs=1e-9)
    assert result["flicker"]["real"]["pairs"] == 2 and result["flicker"]["real"]["clips"] == 2

    # The real set's cache holds the features (KID needs them) and the FID statistics.
    (cache_file,) = cache.iterdir()
    assert str(cache_file) == result["real_cache_file"]
    with np.load(cache_file) as z:
        assert z["features"].shape == (4, 2048) and z["sigma"].shape == (2048, 2048)
        assert np.abs(z["features"] - real_f).max() <= 1e-4 * np.abs(real_f).max()

    # Again: the real features come from the cache, nothing is extracted.
    variables = load_inception_params(weights_file)

    def no_extraction(paths, *args, **kwargs):
        raise AssertionError("features recomputed despite the cache")

    monkeypatch.setattr(evaluate, "extract_features", no_extraction)
    again = folder_statistics(folders["real"], variables, cache_dir=cache, progress=None)
    assert again.from_cache and again.cache_file == result["real_cache_file"]
    with np.load(cache_file) as z:
        np.testing.assert_array_equal(again.features, z["features"])

    # Touching a real image changes the key: the stale cache is not used.
    first = list_images(folders["real"])[0]
    st = os.stat(first)
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="recomputed despite the cache"):
        folder_statistics(folders["real"], variables, cache_dir=cache, progress=None)


def test_input_errors(folders, weights_file, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["--inception", weights_file, "--kid_subset_size", "3"]

    assert main(["--fake", str(empty), "--real", folders["real"], *base]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no images found" in err and err.count("\n") == 1

    assert (
        main(["--fake", folders["fake"], "--real", folders["real"], "--inception", weights_file])
        == 2
    )
    err = capsys.readouterr().err
    assert "KID subset size 1000 is larger than the 3 fake images" in err
    assert "--kid_subset_size 3" in err

    assert (
        main(
            [
                "--fake",
                folders["fake"],
                "--real",
                folders["real"],
                "--inception",
                str(tmp_path / "none.pth"),
                "--kid_subset_size",
                "3",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "pt_inception-2015-12-05-6726825d.pth" in err and "github.com" in err

    bad = tmp_path / "bad" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(EvalInputError, match="broken.png: cannot decode image"):
        evaluate.extract_features([str(bad)], {}, progress=None)


def test_flicker_alone_needs_no_weights(folders, tmp_path, capsys, monkeypatch):
    """--flicker without --inception: flicker of each folder, no weights loaded, no network."""

    def no_network(*args, **kwargs):
        raise AssertionError("the network or its weights were used for flicker alone")

    monkeypatch.setattr(evaluate, "load_inception_params", no_network)
    monkeypatch.setattr(evaluate, "extract_features", no_network)
    out = tmp_path / "flicker.json"
    argv = ["--fake", folders["fake"], "--real", folders["real"], "--flicker", "--json", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    f = folders["fake_images"]
    fake = [np.abs(f[t].astype(int) - f[t - 1].astype(int)).mean() for t in (1, 2)]
    r = folders["real_images"]  # two clips of two frames: pairs (0, 1) and (2, 3)
    real = [np.abs(r[t].astype(int) - r[t - 1].astype(int)).mean() for t in (1, 3)]
    result = json.loads(out.read_text())
    assert (result["num_fake"], result["num_real"]) == (3, 4) and "fid" not in result
    assert result["flicker"]["fake"] == {
        "mean": pytest.approx(np.mean(fake), abs=1e-9),
        "std": pytest.approx(np.std(fake), abs=1e-9),
        "pairs": 2,
        "clips": 1,
    }
    assert result["flicker"]["real"]["mean"] == pytest.approx(np.mean(real), abs=1e-9)
    assert printed == [
        f"fake: {folders['fake']} (3 images)",
        f"real: {folders['real']} (4 images)",
        f"flicker fake (mean |frame_t - frame_t-1|, 0-255): {np.mean(fake):.4f} ± "
        f"{np.std(fake):.4f} (2 pairs, 1 clip(s))",
        f"flicker real (mean |frame_t - frame_t-1|, 0-255): {np.mean(real):.4f} ± "
        f"{np.std(real):.4f} (2 pairs, 2 clip(s))",
    ]
    # --real is optional for flicker alone
    assert main(["--fake", folders["fake"], "--flicker"]) == 0
    assert capsys.readouterr().out.splitlines() == printed[:1] + printed[2:3]
    # Without --flicker, FID needs the weights (and --real): one line each, saying so.
    assert main(["--fake", folders["fake"], "--real", folders["real"]]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: FID and KID need --inception pt_inception-2015-12-05-6726825d.pth (download it "
        "from https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth); pass --flicker alone for flicker without it\n"
    )
    assert main(["--fake", folders["fake"], "--inception", "w.pth"]) == 2
    assert capsys.readouterr().err == (
        "error: FID and KID need --real, the folder of real visible frames\n"
    )


def test_cli_missing_folder_subprocess(tmp_path):
    """The real entry point: one line on stderr, exit status 2, no traceback."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cptrans_jax.evaluate",
            "--fake",
            str(tmp_path / "missing"),
            "--real",
            str(tmp_path),
            "--inception",
            str(tmp_path / "w.pth"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: {tmp_path / 'missing'}: no such folder\n"


# ------------------------------------------------------------------- outputs under faults


@pytest.fixture
def no_network(monkeypatch):
    """Stands in for the weights file, the network and FID, so that only the outputs are
    tested: features are random numbers fixed by the image count."""

    def features(paths, variables, **kwargs):
        return np.random.default_rng(len(paths)).normal(size=(len(paths), 2048)).astype(np.float32)

    monkeypatch.setattr(evaluate, "load_inception_params", lambda path: {"params": {"w": 1.0}})
    monkeypatch.setattr(evaluate, "extract_features", features)
    # The 2048² matrix square root takes seconds; its maths is test_eval_stats.py's.
    monkeypatch.setattr(eval_stats, "frechet_distance", lambda *args: 1.0)


@contextlib.contextmanager
def file_size_limit(limit):
    """``ulimit -f``: writing past ``limit`` bytes of any file fails with EFBIG, as a full
    disk would fail it (SIGXFSZ is ignored, as Python sets it at start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def run_main(folders, *extra):
    argv = ["--fake", folders["fake"], "--real", folders["real"], "--inception", "w.pth"]
    return main([*argv, "--kid_subset_size", "3", "--kid_subsets", "2", *map(str, extra)])


def test_json_folder_is_made_and_the_file_written_whole(folders, tmp_path, no_network, capsys):
    out = tmp_path / "new" / "sub" / "result.json"
    assert run_main(folders, "--json", out) == 0
    assert json.loads(out.read_text())["num_real"] == 4
    assert os.listdir(out.parent) == ["result.json"]  # no temporary file left
    assert capsys.readouterr().err.count("error") == 0


def test_bad_output_paths_fail_before_any_work(folders, tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output paths were checked")

    monkeypatch.setattr(evaluate, "load_inception_params", no_work)
    monkeypatch.setattr(evaluate, "extract_features", no_work)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["--json", a_file / "out.json"], f"--json {a_file / 'out.json'}: {a_file} is a file; "),
        (["--json", a_file / "x" / "o.json"], f"--json {a_file / 'x' / 'o.json'}: {a_file} is a"),
        (["--json", tmp_path], f"--json {tmp_path} is a folder; expected a file path"),
        (["--cache_dir", a_file], f"--cache_dir {a_file} is a file; expected a folder"),
    ]
    for extra, message in cases:
        assert run_main(folders, *extra) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == ["a_file"] and a_file.read_text() == "x"


def test_failed_json_write_keeps_the_earlier_file(folders, tmp_path, no_network, capsys):
    out = tmp_path / "result.json"
    out.write_text('{"earlier": true}\n')
    with file_size_limit(64):  # the result is ~700 bytes
        assert run_main(folders, "--json", out) == 2
    assert capsys.readouterr().err == (
        f"error: --json {out}: writing failed (File too large); the file is left as it was\n"
    )
    assert out.read_text() == '{"earlier": true}\n' and os.listdir(tmp_path) == ["result.json"]


def test_failed_cache_write_is_a_warning(folders, tmp_path, no_network, capsys):
    cache, out = tmp_path / "cache", tmp_path / "result.json"
    with file_size_limit(1 << 20):  # the cache file is 33 MB, the JSON result 1 kB
        assert run_main(folders, "--cache_dir", cache, "--json", out) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: the feature cache ")
    assert warnings[0].endswith(
        "could not be written (File too large); the results are not affected"
    )
    assert os.listdir(cache) == []  # no half-written cache file under any name
    result = json.loads(out.read_text())
    assert result["real_cache_file"] is None and result["num_real"] == 4
