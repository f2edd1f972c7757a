"""The data build on Apache Beam (issue 13, item 5): the same records and frame table as the
plain build, on the DirectRunner in this process and with two worker processes.

The Beam tests need the ``[beam]`` extra and are marked ``beam`` (CI installs the extra and runs
them as their own step: ``python -m pytest -q -m beam``). Without apache_beam they skip, except
on CI (``CI`` set), where they fail: a CI run that skipped them would prove nothing.
"""

import builtins
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from data_fixtures import frames_tree, pair_tree

from cptrans_jax.data import builders
from cptrans_jax.data.layouts import FrameError

tfds.disable_progress_bar()
ROOT = Path(__file__).resolve().parents[1]
TWO_PROCESSES = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def build_script():
    spec = importlib.util.spec_from_file_location("build", ROOT / "data_prep" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def beam_build():
    """The beam_build module, once apache_beam imports."""
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("apache_beam is not installed on CI: pip install -e '.[beam]'")
        pytest.skip("needs the [beam] extra: pip install -e '.[beam]'")
    from cptrans_jax.data import beam_build

    return beam_build


def contents(builder, split):
    """(domain, video, frame) → decoded pixels of every record, and the frame table."""
    source = builder.as_data_source(split)
    records = {}
    for i in range(len(source)):
        r = source[i]
        key = (int(r["domain"]), r["video"].decode(), int(r["frame_index"]))
        assert key not in records
        records[key] = r["image"]
    return records, builders.frame_table(builder, split)


CASES = {
    # The authors' pair files, two worker processes.
    "packed": ("infraredcity_lite", "monitor", pair_tree, TWO_PROCESSES, False),
    # Frame folders with a corrupt file skipped, in this process: the skipped file is reported.
    "frames": ("infraredcity_adverse", "rain", frames_tree, [], True),
}


@pytest.mark.beam
@pytest.mark.parametrize("case", sorted(CASES))
def test_beam_build_gives_the_plain_build(tmp_path, beam_build, case, monkeypatch):
    dataset, scene, make_tree, flags, skip = CASES[case]
    # Chunks of two videos, so that a folder is several chunks (the last one short).
    monkeypatch.setattr(beam_build, "CHUNK", 2)
    layout = "packed" if case == "packed" else "frames"
    manual = make_tree(tmp_path / "manual")
    if skip:
        (manual / scene / "trainA" / "video1" / "f_3.png").write_bytes(b"not a png")
    lines = {"plain": [], "beam": []}
    built = {
        how: builders.build(
            dataset,
            scene,
            layout,
            manual,
            tmp_path / how,
            skip_corrupt=skip,
            beam_options=beam_build.pipeline_options("DirectRunner", flags)
            if how == "beam"
            else None,
            print_fn=lines[how].append,
        )
        for how in ("plain", "beam")
    }
    for split in ("train", "test"):
        plain, plain_table = contents(built["plain"], split)
        beam, beam_table = contents(built["beam"], split)
        assert len(plain) == built["plain"].info.splits[split].num_examples > 0
        assert sorted(beam) == sorted(plain)
        for key, pixels in plain.items():
            np.testing.assert_array_equal(beam[key], pixels, err_msg=str(key))
        # Same records in the same order: the same table, row for row.
        assert sorted(plain_table) == sorted(beam_table) == ["domain", "frame", "video", "videos"]
        for name in plain_table:
            np.testing.assert_array_equal(beam_table[name], plain_table[name], err_msg=name)
    # The same report (frames, videos, skipped files), but for the folder it was built in.
    assert [line for line in lines["beam"] if not line.startswith("built ")] == [
        line for line in lines["plain"] if not line.startswith("built ")
    ]
    assert any("skipped 1 corrupt files" in line for line in lines["beam"]) == skip


@pytest.mark.beam
def test_a_workers_bad_file_is_the_plain_builds_error(tmp_path, beam_build):
    manual = frames_tree(tmp_path / "manual")
    bad = manual / "rain" / "testB" / "video0" / "f_1.png"
    bad.write_bytes(b"not a png")
    options = beam_build.pipeline_options("DirectRunner", TWO_PROCESSES)
    with pytest.raises(FrameError) as caught:
        builders.build(
            "infraredcity_adverse",
            "rain",
            "frames",
            manual,
            tmp_path / "data",
            beam_options=options,
        )
    assert caught.value.path == str(bad) and caught.value.corrupt
    assert str(caught.value).startswith(f"{bad}: cannot be decoded as an image")
    assert not (tmp_path / "data").exists()  # nothing half-built


@pytest.mark.beam
def test_a_misspelt_beam_option_is_an_error(beam_build, capsys):
    with pytest.raises(ValueError, match="unknown Beam pipeline option --direct_num_workrs"):
        beam_build.pipeline_options("DirectRunner", ["--direct_num_workrs=2"])
    options = beam_build.pipeline_options("DirectRunner", TWO_PROCESSES).get_all_options()
    assert options["direct_num_workers"] == 2 and options["runner"] == "DirectRunner"


def test_without_beam_the_cli_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    real_import = builtins.__import__

    def no_beam(name, *args, **kwargs):
        if name == "apache_beam" or name.startswith("apache_beam."):
            raise ImportError("No module named 'apache_beam'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_beam)
    argv = ["--dataset", "irvi", "--scene", "traffic", "--manual_dir", str(tmp_path)]
    argv += ["--data_dir", str(tmp_path / "data")]
    assert build_script().main([*argv, "--beam", "--direct_num_workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: building with --beam needs Apache Beam, which is not installed: "
        "pip install -e '.[beam]'\n"
    )
    # A Beam option without --beam is a usage error, not ignored.
    with pytest.raises(SystemExit) as exit_:
        build_script().main([*argv, "--direct_num_workers", "2"])
    assert exit_.value.code == 2
    assert "Beam options need --beam" in capsys.readouterr().err
