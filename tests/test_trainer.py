"""End-to-end training on the built-in demo with tiny networks (issue 4)."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cptrans_jax import config as config_lib
from cptrans_jax import trainer
from cptrans_jax.checkpoints import Checkpointer

ROOT = os.path.dirname(os.path.dirname(__file__))
sys.path.insert(0, os.path.join(ROOT, "configs"))
import demo  # noqa: E402

TINY = {
    "data.frame_size": 32,
    "data.load_size": 32,
    # 2 steps per epoch at batch 2: what test_trains_on_a_built_data_set's 5 clips give too, so
    # that test's program (the lr schedule counts epochs) is the one the others compiled.
    "data.epoch_size": 4,
    "model.ngf": 8,
    "model.n_blocks": 1,
    "model.vit.image_size": 48,
    "model.vit.patch_size": 8,
    "model.vit.width": 32,
    "model.vit.mlp_dim": 64,
    # A random ViT of the tiny size: configs/demo.py's pretrained demo_vit.npz has the demo's.
    "model.vit_weights": "",
    "train.log_every": 1,
    "train.sample_every": 2,
    "train.checkpoint_every": 2,
    # One CPU device (configs/demo.py asks for 2): the CLI tests' programs are then the ones
    # the in-process tests compiled, and the multi-process tests set devices by XLA_FLAGS.
    "train.cpu_devices": 0,
}


def test_cpu_devices_split_the_host_before_jax_starts():
    code = (
        "from cptrans_jax import config_cli; config_cli.use_cpu_devices(2); import jax; "
        "print(jax.device_count(), jax.devices()[0].platform)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["2", "cpu"]


def tiny_config(arg=None, **overrides):
    c = demo.get_config(arg)
    for key, value in {**TINY, **overrides}.items():
        *path, name = key.split(".")
        target = c
        for p in path:
            target = target[p]
        target[name] = value
    return c


def params_of(state):
    return jax.tree.map(np.asarray, (state.g_params, state.d_params, state.g_opt_state))


@pytest.mark.parametrize("arg", ["method=cptrans", "method=roma"])
def test_two_step_training_writes_everything(tmp_path, arg):
    lines = []
    state = trainer.train(
        tiny_config(arg, **{"train.max_steps": 2}), str(tmp_path), print_fn=lines.append
    )
    assert int(state.step) == 2
    assert sorted(os.listdir(tmp_path)) == [
        "checkpoints",
        "config.json",
        "config_history",
        "samples",
        "tensorboard",
        "trainer.lock",
    ]
    assert Checkpointer(tmp_path / "checkpoints", save_every=2, keep=3).latest_step() == 2
    assert os.listdir(tmp_path / "samples") == ["step_0000002.png"]
    assert os.path.getsize(next((tmp_path / "tensorboard").iterdir())) > 1000
    # Whether this process compiled the tiny program already depends on the tests before; the
    # first-compile wording is test_ctrl_c_saves_and_exits_130's (a fresh process).
    if lines[0] == "compiling the training iteration…":
        assert re.fullmatch(r"training iteration compiled in \d+\.\d s", lines[1]), lines[1]
    else:
        assert re.fullmatch(
            r"training iteration already compiled in this process \(\d+\.\d s\)", lines[0]
        ), lines[0]
        lines.insert(0, "")
    # Step 1 is printed at once (log_every is 1 here, but due() makes it so for any value).
    assert lines[2].startswith("step 1/2 | -- it/s | ETA -- | ")
    assert "loss/g " in lines[2] and "lr/g " in lines[2]
    assert lines[3].startswith("step 2/2 | ") and "it/s | ETA 0:00:00 | " in lines[3]
    # The last line says how long the whole start took (minutes:seconds), checksum last.
    done = r"process 0/1: finished at step 2 in \d+:[0-5]\d, parameter checksum -?\d\.\d+e[+-]\d+"
    assert re.fullmatch(done, lines[-1]), lines[-1]
    for leaf in jax.tree.leaves(params_of(state)):
        assert np.all(np.isfinite(leaf))


def test_resume_is_bit_identical(tmp_path):
    straight = trainer.train(
        tiny_config(**{"train.max_steps": 4}), str(tmp_path / "a"), print_fn=lambda *_: None
    )
    trainer.train(
        tiny_config(**{"train.max_steps": 2}), str(tmp_path / "b"), print_fn=lambda *_: None
    )
    lines = []
    resumed = trainer.train(
        tiny_config(**{"train.max_steps": 4}), str(tmp_path / "b"), print_fn=lines.append
    )
    assert lines[0].startswith("resumed from") and "(step 2 of 4)" in lines[0]
    # The third train() of this config in this process: nothing to compile, and it says so.
    assert lines[1] == "config change since step 2: train.max_steps: 2 -> 4"
    assert lines[2].startswith("training iteration already compiled in this process (")
    assert lines[3].startswith("step 3/4 | -- it/s | ETA -- | ")
    assert int(resumed.step) == 4
    for a, b in zip(
        jax.tree.leaves(params_of(straight)), jax.tree.leaves(params_of(resumed)), strict=True
    ):
        np.testing.assert_array_equal(a, b)  # CPU: bit for bit


def _cli(workdir, *extra):
    args = [
        sys.executable,
        "-m",
        "cptrans_jax.train",
        "--config",
        "configs/demo.py",
        "--workdir",
        str(workdir),
    ]
    args += [f"--config.{k}={v}" for k, v in TINY.items()] + list(extra)
    return args


def test_ctrl_c_saves_and_exits_130(tmp_path):
    """SIGINT, as Ctrl-C sends it: the iteration ends, a checkpoint is saved, the command exits
    130 without a traceback, and the run picks up from that checkpoint. (SIGTERM, the same
    with exit 0, is test_faults.py's test_sigterm_saves_and_returns.)"""
    proc = subprocess.Popen(
        _cli(tmp_path, "--config.train.max_steps=100000", "--config.train.checkpoint_every=100000"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    deadline = time.time() + 300
    for line in proc.stdout:  # wait for a few real iterations before interrupting
        seen.append(line)
        if len(seen) <= 2:  # a fresh process: the compile is announced, then timed
            assert seen[0] == "compiling the training iteration…\n", seen
            assert len(seen) == 1 or re.fullmatch(
                r"training iteration compiled in [\d.]+ s\n", line
            )
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGINT)
            break
        assert time.time() < deadline, "".join(seen[-20:])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, "".join(seen) + out + err[-3000:]
    assert "SIGINT: saved step" in out and "Traceback" not in err, err[-3000:]
    step = Checkpointer(tmp_path / "checkpoints", save_every=100000, keep=3).latest_step()
    assert step is not None and step >= 3
    # and the run picks up from it (in-process: the resume itself is the library's)
    lines = []
    c = tiny_config(**{"train.max_steps": step + 1, "train.checkpoint_every": 100000})
    state = trainer.train(c, str(tmp_path), print_fn=lines.append)
    assert f"resumed from {tmp_path}/checkpoints/{step} (step {step} of {step + 1})" in lines
    assert int(state.step) == step + 1


def test_cli_rejects_bad_config(tmp_path):
    bad_field = subprocess.run(
        _cli(tmp_path, "--config.train.nope=3"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad_field.returncode == 2 and "bad config override" in bad_field.stderr
    assert "Traceback" not in bad_field.stderr
    bad_value = subprocess.run(
        _cli(tmp_path, "--config.data.frame_size=30"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad_value.returncode == 2
    assert "config field data.frame_size: must be a multiple of 4" in bad_value.stderr
    bad_batch = subprocess.run(
        _cli(tmp_path, "--config.train.num_devices=1", "--config.data.global_batch_size=0"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad_batch.returncode == 2 and "data.global_batch_size" in bad_batch.stderr


def _checksum(text):
    line = [x for x in text.splitlines() if "parameter checksum" in x][-1]
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.multidevice
def test_two_processes_on_loopback_agree(tmp_path):
    """Two processes (1 CPU device each, jax.distributed on 127.0.0.1) train two steps; both
    hold the same parameters, equal to one process driving two devices on the same batch."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    args = ["--config", "configs/demo.py", "--config.train.max_steps=2"]
    args += [f"--config.{k}={v}" for k, v in TINY.items()]
    run = subprocess.run(
        ["bash", "launch/local_multiprocess.sh", "2", str(tmp_path / "mp"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    logs = [(tmp_path / "mp" / f"proc_{i}.log").read_text() for i in range(2)]
    assert run.returncode == 0, run.stdout + run.stderr + logs[0][-3000:] + logs[1][-3000:]
    assert "process 0/2: finished at step 2" in logs[0]
    assert "process 1/2: finished at step 2" in logs[1]
    c0, c1 = _checksum(logs[0]), _checksum(logs[1])
    assert c0 == c1
    single = subprocess.run(
        [sys.executable, "-m", "cptrans_jax.train", "--workdir", str(tmp_path / "sp"), *args],
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert abs(_checksum(single.stdout) - c0) <= 1e-6 * abs(c0)


EIGHT_VS_ONE = """
import json, os, sys
sys.path.insert(0, "configs")
import jax, numpy as np
import demo
from cptrans_jax import trainer
tiny = json.loads(sys.argv[1])
out = {}
for n in (1, 8):
    c = demo.get_config()
    for key, value in {**tiny, "data.global_batch_size": 8, "data.epoch_size": 16,
                       "train.max_steps": 2, "train.num_devices": n, "optim.g_lr": 1e-5,
                       "optim.d_lr": 1e-5}.items():
        *path, name = key.split(".")
        target = c
        for p in path:
            target = target[p]
        target[name] = value
    state = trainer.train(c, os.path.join(sys.argv[2], str(n)), print_fn=lambda *_: None)
    flat = jax.tree_util.tree_flatten_with_path({"G": state.g_params, "D": state.d_params})[0]
    out[n] = {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}
diffs = {k: float(np.abs(out[1][k] - out[8][k]).max()) for k in out[1]}
print(json.dumps({"devices": jax.device_count(), "diffs": diffs}))
"""


@pytest.mark.multidevice
def test_eight_devices_train_like_one(tmp_path):
    """The trainer on 8 simulated devices and on 1, same global batch of 8, two steps."""
    import json

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    run = subprocess.run(
        [sys.executable, "-c", EIGHT_VS_ONE, json.dumps(TINY), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(result)
    assert result["devices"] == 8
    # A G conv bias that feeds an instance norm has an exactly zero gradient, i.e. rounding noise
    # that differs with the summation order, and Adam turns noise into steps of up to lr; those
    # (every G bias but the last conv's) are held to 2 steps × 2·lr, every other parameter to
    # 1e-6 (mesh_equivalence.py checks the iteration in float64).
    final_conv = "['model_" + str(12 + TINY["model.n_blocks"] + 9) + "']"
    noise = {
        k: v
        for k, v in result["diffs"].items()
        if k.startswith("['G']") and k.endswith("['bias']") and final_conv not in k
    }
    rest = {k: v for k, v in result["diffs"].items() if k not in noise}
    assert len(noise) == 3 + 2 * TINY["model.n_blocks"] + 2
    assert max(noise.values()) <= 4 * 1e-5
    assert max(rest.values()) <= 1e-6, rest


def test_trains_on_a_built_data_set(tmp_path):
    """From a downloaded-style folder to two training steps and a resume, through the CLI's
    library path: build, then the infraredcity_lite config on it."""
    import flax
    import infraredcity_lite
    from data_fixtures import pair_tree

    from cptrans_jax.convert import init_vit_params
    from cptrans_jax.data import builders

    builders.build(
        "infraredcity_lite",
        "monitor",
        "packed",
        pair_tree(tmp_path / "manual"),
        tmp_path / "tfds",
        print_fn=lambda *_: None,
    )
    c = infraredcity_lite.get_config("scene=monitor")
    base = tiny_config()
    c.model = base.model
    c.train = base.train
    c.objective, c.optim = base.objective, base.optim  # the tiny runs' (a compiled program)
    c.data.frame_size, c.data.load_size = 32, 36  # the 8×8 fixture frames upsampled
    c.data.global_batch_size = 2
    c.data.data_dir = str(tmp_path / "tfds")
    c.train.max_steps = 2
    vit = init_vit_params(config_lib.vit_config(c), jax.random.key(0))
    np.savez(tmp_path / "vit.npz", **flax.traverse_util.flatten_dict(vit, sep="/"))
    c.model.vit_weights = str(tmp_path / "vit.npz")
    lines = []
    state = trainer.train(c, str(tmp_path / "run"), print_fn=lines.append)
    assert int(state.step) == 2
    assert any(
        "data: infraredcity_lite/monitor train: 5 infrared and 3 visible clips" in line
        for line in lines
    )
    ckpt = Checkpointer(tmp_path / "run/checkpoints", save_every=2, keep=3)
    assert ckpt.latest_step() == 2
    c.train.max_steps = 3
    lines = []
    state = trainer.train(c, str(tmp_path / "run"), print_fn=lines.append)
    assert int(state.step) == 3 and any(line.startswith("resumed from") for line in lines)
    for leaf in jax.tree.leaves(params_of(state)):
        assert np.all(np.isfinite(leaf))


def test_default_progress_print_flushes(monkeypatch):
    # Redirected stdout is block-buffered: an unflushed progress line sits in the buffer for
    # minutes. The trainer's default print must push each line through at once.
    import io

    from cptrans_jax import trainer

    class Recorder(io.StringIO):
        flushes = 0

        def flush(self):
            Recorder.flushes += 1
            super().flush()

    out = Recorder()
    monkeypatch.setattr("sys.stdout", out)
    trainer.say_flushed("step 1/10")
    assert out.getvalue() == "step 1/10\n" and Recorder.flushes == 1
    assert trainer.train.__kwdefaults__["print_fn"] is trainer.say_flushed
