"""Faults, races and hostile files (issue 10): a run, a workdir and a weight file can be trusted.

Each test reproduces one way things go wrong — two trainers on one work directory, a damaged
checkpoint, a refused or changed restart, a full disk, Ctrl-C, a divergence, bad command lines —
and checks what the user gets: one line saying what happened, nothing lost, nothing half
written. The restricted unpickler's poisoning tests live in ``test_torch_pickle.py``; the
translate/evaluate output tests in ``test_translate.py`` and ``test_evaluate.py``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from test_checkpoints import assert_same_state, tiny_state
from test_trainer import ROOT, _cli, tiny_config

from cptrans_jax import trainer, workdir
from cptrans_jax.checkpoints import (
    Checkpointer,
    CheckpointMismatchError,
    UnreadableCheckpointError,
    abstract_like,
)
from cptrans_jax.workdir import ConfigChangeError, WorkdirError, WorkdirLock

QUIET = {"print_fn": lambda *_: None}


@pytest.fixture(scope="module")
def sharding():
    return jax.sharding.NamedSharding(jax.make_mesh((1,), ("data",)), jax.P())


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# ------------------------------------------------------------------ one trainer per workdir

_HOLD_LOCK = """
import sys, time
from cptrans_jax.workdir import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_names_the_holder_and_dies_with_it(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirError) as info:
            WorkdirLock(tmp_path).acquire()
        message = str(info.value)
        assert "\n" not in message
        assert f"workdir {tmp_path} is in use by another trainer" in message
        assert f"PID {holder.pid} on host " in message
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
        holder.wait()
    with WorkdirLock(tmp_path) as lock, open(lock.path) as f:  # no stale lock
        assert f"PID {os.getpid()}" in f.read()
    with WorkdirLock(tmp_path):  # released by the context manager: can be taken again
        pass


def test_two_trainers_started_together(tmp_path):
    """Started at the same moment on one work directory: one claims it, the other exits 2 at
    once with one line naming the holder, having written nothing. After the holder is
    SIGKILLed, the directory can be claimed again (no stale lock)."""
    args = _cli(tmp_path, "--config.train.max_steps=100000")
    procs = [
        subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        deadline = time.time() + 120
        while all(p.poll() is None for p in procs):
            assert time.time() < deadline, "neither trainer gave way"
            time.sleep(0.1)
        loser = next(p for p in procs if p.poll() is not None)
        winner = next(p for p in procs if p is not loser)
        _, err = loser.communicate()
        proc = subprocess.CompletedProcess(args, loser.returncode, "", err)
        _assert_one_line_error(
            proc, f"workdir {tmp_path} is in use by another trainer", f"PID {winner.pid} "
        )
        assert winner.poll() is None  # still going
    finally:
        for p in procs:
            p.kill()
            p.wait()
    path, lock = workdir.claim(tmp_path)
    assert path == str(tmp_path)
    with open(lock.path) as f:
        assert f"PID {os.getpid()}" in f.read()
    lock.release()


# ---------------------------------------------------------- falling back past damaged steps


def _data_files(step_dir) -> list[str]:
    files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*"))
    return sorted(files, key=os.path.getsize)


def _truncate(step_dir):
    big = _data_files(step_dir)[-1]
    with open(big, "r+b") as f:
        f.truncate(os.path.getsize(big) // 2)


def _write(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _overwrite(step_dir, make):
    for path in _data_files(step_dir):
        data = make(os.path.getsize(path))
        with open(path, "wb") as f:
            f.write(data)


CORRUPTIONS = {
    "truncated data file": _truncate,
    "zeroed data files": lambda d: _overwrite(d, lambda n: b"\0" * n),
    "random data files": lambda d: _overwrite(d, lambda n: np.random.default_rng(0).bytes(n)),
    "deleted manifest": lambda d: os.remove(os.path.join(d, "state", "manifest.ocdbt")),
    "deleted state": lambda d: shutil.rmtree(os.path.join(d, "state")),
    "deleted state metadata": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "garbage data state": lambda d: _write(os.path.join(d, "data", "metadata"), b"\x93{not"),
}


def _three_checkpoints(directory) -> None:
    with Checkpointer(directory, save_every=1, keep=3) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, tiny_state(step, size=2000), {"pos": step})


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_restore_falls_back_past_a_damaged_step(tmp_path, sharding, corruption):
    directory = tmp_path / "checkpoints"
    _three_checkpoints(directory)
    CORRUPTIONS[corruption](str(directory / "3"))
    warnings = []
    ckpt = Checkpointer(directory, save_every=1, keep=3)
    abstract = abstract_like(tiny_state(0, size=2000), sharding)
    step, state, data = ckpt.restore_readable(abstract, warn=warnings.append)
    assert step == 2 and data == {"pos": 2}
    assert_same_state(state, tiny_state(2, size=2000))
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith(f"warning: checkpoint 3 in {directory} is unreadable (")
    # Set aside, never deleted, with the reason beside it; Orbax no longer lists it.
    aside = tmp_path / "checkpoints.unreadable" / "3"
    assert f"moved to {aside}" in warnings[0]
    assert (aside / "REASON.txt").read_text().strip() in warnings[0]
    assert ckpt.all_steps() == [1, 2]
    # Training goes on: step 3 saves again.
    assert ckpt.save(3, tiny_state(3, size=2000), {"pos": 3})
    ckpt.close()


def test_nothing_readable_is_one_error_and_a_reader_moves_nothing(tmp_path, sharding):
    directory = tmp_path / "checkpoints"
    _three_checkpoints(directory)
    for step in (1, 2, 3):
        _truncate(str(directory / str(step)))
    abstract = abstract_like(tiny_state(0, size=2000), sharding)
    warnings = []
    with Checkpointer(directory, save_every=1, keep=3) as ckpt:
        with pytest.raises(UnreadableCheckpointError) as info:
            ckpt.restore_readable(abstract, warn=warnings.append, set_aside=False)
        assert "\n" not in str(info.value)
        assert str(info.value).startswith(f"no readable checkpoint in {directory}: 3 (")
        assert len(warnings) == 3 and all(w.endswith("; skipped") for w in warnings)
        assert ckpt.all_steps() == [1, 2, 3]  # a reader leaves them where they are
    assert not (tmp_path / "checkpoints.unreadable").exists()


def test_a_mismatch_is_not_damage(tmp_path, sharding):
    directory = tmp_path / "checkpoints"
    _three_checkpoints(directory)
    abstract = abstract_like(tiny_state(0, size=7), sharding)  # another "model size"
    with Checkpointer(directory, save_every=1, keep=3) as ckpt:
        with pytest.raises(CheckpointMismatchError, match="does not match"):
            ckpt.restore_readable(abstract, warn=pytest.fail)
        assert ckpt.all_steps() == [1, 2, 3]


# ------------------------------------------------------------------------ disks and folders


def _with_file_size_limit(kilobytes: int, args: list[str]) -> list[str]:
    """``args`` run under ``ulimit -f``: writes past the limit fail with EFBIG (Python ignores
    SIGXFSZ), a full disk for every file as far as the trainer can tell, with no small file
    system to mount. (Through a shell rather than preexec_fn: no fork of a threaded process.)"""
    return ["bash", "-c", f'ulimit -f {kilobytes} && exec "$@"', "bash", *args]


def test_full_disk_at_start(tmp_path):
    proc = subprocess.run(
        _with_file_size_limit(1, _cli(tmp_path / "run")),  # below the 16 KB the start checks
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _assert_one_line_error(proc, f"workdir {tmp_path}/run is not writable: File too large")


def test_workdir_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    proc = subprocess.run(
        _cli(tmp_path / "run"), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    _assert_one_line_error(proc, f"workdir {tmp_path}/run is a file, not a directory")


def test_read_only_workdir(tmp_path, monkeypatch):
    """A real read-only folder where the tests do not run as root (root writes anyway); as
    root, the write the check makes fails as a read-only file system would."""
    target = tmp_path / "ro"
    target.mkdir()
    if os.geteuid() == 0:

        def refuse(*args, **kwargs):
            raise OSError(30, "Read-only file system", str(target))

        monkeypatch.setattr(workdir.tempfile, "mkstemp", refuse)
    else:
        target.chmod(0o555)
    try:
        with pytest.raises(WorkdirError) as info:
            trainer.train(tiny_config(), str(target), **QUIET)
    finally:
        target.chmod(0o755)
    assert str(info.value) == (
        f"workdir {target} is not writable: "
        + ("Read-only file system" if os.geteuid() == 0 else "Permission denied")
        + " (read-only or not yours)"
    )
    assert os.listdir(target) == []


# ---------------------------------------------------------------------- bad command lines

BAD_COMMAND_LINES = {
    "unknown config file": (
        ["--config", "configs/nope.py"],
        ["config file configs/nope.py not found; the configs are: configs/demo.py"],
    ),
    "bad config argument": (
        ["--config", "configs/infraredcity_lite.py:scene=monitr"],
        ["scene must be one of", "got 'monitr'"],
    ),
    "negative cpu_devices": (
        ["--config", "configs/demo.py", "--config.train.cpu_devices=-1"],
        ["train.cpu_devices: must be ≥ 0 (0 = JAX's default), got -1"],
    ),
    "unknown field": (
        ["--config", "configs/demo.py", "--config.data.frame_sz=3"],
        ['unknown field frame_sz; Did you mean "frame_size"'],
    ),
    "infinite learning rate": (
        ["--config", "configs/demo.py", "--config.optim.g_lr=inf"],
        ["config field optim.g_lr: must be a finite number > 0, got inf"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMAND_LINES))
def test_bad_command_lines_are_one_line(tmp_path, case):
    args, fragments = BAD_COMMAND_LINES[case]
    proc = subprocess.run(
        [sys.executable, "-m", "cptrans_jax.train", *args, "--workdir", str(tmp_path / "w")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "w").exists()


# ------------------------------------- the trainer: resume, config, signals, a full disk
# (Last in the file: by then the other worker has compiled the tiny networks' programs, and
# the persistent compilation cache serves them.)


def _train(tmp_path, name="run", **overrides):
    return trainer.train(tiny_config(**overrides), str(tmp_path / name), **QUIET)


def test_damaged_newest_checkpoint_and_a_changed_config(tmp_path):
    """The trainer on a work directory whose newest checkpoint is damaged: one warning, the
    step set aside, resumed from the one before, the changed fields printed and recorded, and
    it ends where an undisturbed run ends. (The changed fields leave the compiled step as it
    is, so this costs no compilation; ResumeCheck's unit test covers the learning rate.)"""
    run = tmp_path / "run"
    _train(tmp_path, **{"train.max_steps": 4, "train.checkpoint_every": 2})
    assert Checkpointer(run / "checkpoints", save_every=2, keep=3).all_steps() == [2, 4]
    _truncate(str(run / "checkpoints" / "4"))
    lines = []
    state = trainer.train(
        tiny_config(**{"train.max_steps": 4, "train.seed": 7, "train.log_every": 50}),
        str(run),
        print_fn=lines.append,
    )
    assert int(state.step) == 4
    assert lines[0].startswith(f"warning: checkpoint 4 in {run}/checkpoints is unreadable (")
    assert lines[1] == f"resumed from {run}/checkpoints/2 (step 2 of 4)"
    assert lines[2:4] == [
        "config change since step 2: train.log_every: 1 -> 50",
        "config change since step 2: train.seed: 0 -> 7",
    ]
    assert (run / "checkpoints.unreadable" / "4" / "REASON.txt").exists()
    history = sorted(os.listdir(run / "config_history"))
    assert history == ["start_000.json", "start_001.json"]
    second = json.loads((run / "config_history" / "start_001.json").read_text())
    assert second["start_step"] == 2
    assert {"field": "train.seed", "old": 0, "new": 7} in second["changes"]
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 7


def test_resume_check_refuses_the_network_and_stream_and_reports_the_rest(tmp_path):
    old = trainer.json_config(tiny_config())
    new = trainer.json_config(
        tiny_config(**{"optim.g_lr": 1e-4, "variant": "no_co", "data.data_dir": "/elsewhere"})
    )
    check = workdir.ResumeCheck(new, str(tmp_path))
    check(7, {"config": old})
    assert [workdir.format_change(c) for c in check.changes] == [
        "data.data_dir: '' -> '/elsewhere'",
        "optim.g_lr: 0.0002 -> 0.0001",
        "variant: 'full' -> 'no_co'",
    ]
    for field, value in (("model.ngf", 16), ("method", "roma"), ("data.frame_size", 48)):
        changed = trainer.json_config(tiny_config(**{field: value}))
        with pytest.raises(ConfigChangeError, match=f"checkpoint 7 .*{field}: "):
            workdir.ResumeCheck(changed, str(tmp_path))(7, {"config": old})
    # A checkpoint of an earlier version holds no config: config.json stands in for it.
    workdir.atomic_write_json(tmp_path / "config.json", old)
    with pytest.raises(ConfigChangeError, match="model.n_blocks: 1 -> 2"):
        changed = trainer.json_config(tiny_config(**{"model.n_blocks": 2}))
        workdir.ResumeCheck(changed, str(tmp_path))(7, {})


def test_refused_restart_leaves_the_workdir_as_it_was(tmp_path):
    run = tmp_path / "run"
    _train(tmp_path, **{"train.max_steps": 2})
    before = (run / "config.json").read_bytes()
    with pytest.raises(ConfigChangeError) as info:
        _train(tmp_path, **{"train.max_steps": 4, "model.ngf": 16, "data.seed": 3})
    message = str(info.value)
    assert "\n" not in message
    assert "model.ngf: 8 -> 16" in message and "data.seed: 0 -> 3" in message
    assert (run / "config.json").read_bytes() == before
    assert os.listdir(run / "config_history") == ["start_000.json"]
    assert Checkpointer(run / "checkpoints", save_every=2, keep=3).all_steps() == [2]


def test_finished_run_restarted_keeps_keep_checkpoints(tmp_path):
    overrides = {"train.max_steps": 5, "train.checkpoint_every": 2, "train.keep_checkpoints": 2}
    _train(tmp_path, **overrides)
    _train(tmp_path, **overrides)  # nothing left to do
    lines = []
    trainer.train(tiny_config(**overrides), str(tmp_path / "run"), print_fn=lines.append)
    assert lines[0] == f"resumed from {tmp_path}/run/checkpoints/5 (step 5 of 5)"
    assert Checkpointer(tmp_path / "run/checkpoints", save_every=2, keep=2).all_steps() == [4, 5]


def test_sigterm_saves_and_returns(tmp_path):
    """Preemption in the library: saved at the end of the iteration, the state returned. (The
    command line's SIGINT path is test_trainer.py's test_ctrl_c_saves_and_exits_130.)"""
    c = tiny_config(**{"train.max_steps": 4, "train.checkpoint_every": 100})
    lines = []

    def print_fn(line: str) -> None:
        lines.append(line)
        if line.startswith("step 2/"):
            os.kill(os.getpid(), signal.SIGTERM)  # handled before the next Python bytecode

    state = trainer.train(c, str(tmp_path / "run"), print_fn=print_fn)
    assert int(state.step) == 2 and "SIGTERM: saved step 2, stopping" in lines
    ckpt = Checkpointer(tmp_path / "run/checkpoints", save_every=100, keep=3)
    assert ckpt.all_steps() == [2]
    restored, _ = ckpt.restore(abstract_like(state, state.step.sharding))
    assert_same_state(restored, state)


def test_divergence_is_caught_at_its_step_not_at_the_next_log(tmp_path, monkeypatch):
    """A NaN enters at step 3 (the infrared batch of the third iteration); logging is every 50
    steps. The run stops within two iterations of it, naming step 3 and the terms, and saves
    nothing from it on (checkpoints every 2 steps: step 2's is kept, no later one)."""
    make_source = trainer.make_source

    def poisoned(c, print_fn=print):
        source = make_source(c, print_fn)
        next_batch, calls = source.next_batch, []

        def batch():
            out = next_batch()
            calls.append(1)
            if len(calls) == 3:
                out = {**out, "A": np.full_like(out["A"], np.nan)}
            return out

        source.next_batch = batch
        return source

    monkeypatch.setattr(trainer, "make_source", poisoned)
    c = tiny_config(**{"train.max_steps": 60, "train.log_every": 50, "train.checkpoint_every": 2})
    with pytest.raises(FloatingPointError) as info:
        trainer.train(c, str(tmp_path / "run"), **QUIET)
    message = str(info.value)
    assert message.startswith("non-finite metrics at step 3: "), message
    assert "loss/g = nan" in message
    reached = int(message.split("the run had reached step ")[1].split(")")[0])
    assert 3 <= reached <= 5, message
    assert Checkpointer(tmp_path / "run/checkpoints", save_every=2, keep=3).all_steps() == [2]


def test_full_disk_mid_run_is_reported_at_the_failed_save(tmp_path):
    """After a first run to step 2, a restart on a "disk" that takes no file over 64 KB (the
    checkpoint's data files are larger): the save of step 4 fails, in one line naming step 4,
    and checkpoint 2 is kept and still restores. (A real full disk — a 1.2 MB tmpfs — gives the
    same line with "No space left on device (the disk is full)"; that needs root to mount.)"""
    run = tmp_path / "run"
    _train(tmp_path, **{"train.max_steps": 2, "train.sample_every": 1000})
    proc = subprocess.run(
        _with_file_size_limit(
            64, _cli(run, "--config.train.max_steps=8", "--config.train.sample_every=1000")
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = _assert_one_line_error(proc, f"saving checkpoint 4 to {run}/checkpoints failed")
    assert "File too large" in line and "the checkpoints kept are [2]" in line
    # The write fails in the background: it is reported as soon as it has failed, and at the
    # latest when the next save (step 6) would start — never later, never as a traceback.
    assert "step 4/" in proc.stdout and "step 7/" not in proc.stdout
    assert sorted(os.listdir(run / "checkpoints")) == ["2"]  # no partial step left either
    state = _train(tmp_path, **{"train.max_steps": 3, "train.sample_every": 1000})
    assert int(state.step) == 3
