"""``python -m cptrans_jax.plan``: the TPU ahead-of-time plan (issue 13).

The arithmetic (the affine fit and the largest-batch search, the HLO collective count, the
roofline) is tested on hand-made numbers in the default suite. The compiles for a TPU topology
need libtpu and minutes of CPU: they are marked ``tpu_aot`` and run as their own CI step, in a
virtualenv with ``.[tpu-aot]``; without libtpu they skip locally but fail on CI (``CI`` set).
"""

import dataclasses
import math
import os
import subprocess
import sys
import types

import jax
import pytest

from cptrans_jax import aot_figures, tpu_plan
from cptrans_jax.aot_figures import GiB
from cptrans_jax.tpu_plan import PlanError

# As the plan command does: no TPU is driven, so libtpu's one-process lock is not needed (it
# would refuse the topology while another plan or test process holds it).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
ROOT = os.path.dirname(os.path.dirname(__file__))
sys.path.insert(0, os.path.join(ROOT, "configs"))
import demo  # noqa: E402

TINY = {
    "data.frame_size": 32,
    "data.load_size": 32,
    "model.ngf": 8,
    "model.n_blocks": 1,
    "model.vit.image_size": 48,
    "model.vit.patch_size": 8,
    "model.vit.width": 32,
    "model.vit.mlp_dim": 64,
    # bfloat16 compute: XLA:TPU compiles float32 products at precision highest as 6 bfloat16
    # passes, which made the tiny iteration's compile several times longer (>10 min of CPU).
    "train.compute_dtype": "bfloat16",
}


def tiny_config(arg=None):
    c = demo.get_config(arg)
    for key, value in TINY.items():
        section, *rest = key.split(".")
        target = c[section]
        for name in rest[:-1]:
            target = target[name]
        target[rest[-1]] = value
    return c


# ------------------------------------------------------------------- arithmetic, no libtpu


def test_affine_fit_and_largest_batch_on_hand_made_numbers():
    intercept, slope = aot_figures.affine_fit((1, 3.5 * GiB), (2, 5.0 * GiB))
    assert intercept == pytest.approx(2.0 * GiB) and slope == pytest.approx(1.5 * GiB)
    assert aot_figures.largest_batch(intercept, slope, 16 * GiB) == 9  # 2 + 1.5·9 = 15.5 ≤ 16
    assert aot_figures.largest_batch(intercept, slope, 15.5 * GiB) == 9  # exactly full fits
    assert aot_figures.largest_batch(intercept, slope, 3.0 * GiB) == 0
    with pytest.raises(ValueError, match="does not grow"):
        aot_figures.largest_batch(1.0, 0.0, 2.0)
    with pytest.raises(ValueError, match="two different"):
        aot_figures.affine_fit((2, 1.0), (2, 3.0))


def _recorder(memory):
    calls = []

    def measure(b):
        calls.append(b)
        return memory(b)

    return calls, measure


def test_search_compiles_two_batches_extrapolates_and_confirms_once():
    calls, measure = _recorder(lambda b: (2.0 + 1.5 * b) * GiB)
    found = aot_figures.search_largest_batch(measure, 16 * GiB)
    assert found.batch == 9 and calls == [1, 2, 9]
    assert found.tried[-1] == (9, 15.5 * GiB)


def test_search_refits_when_memory_grows_faster_than_the_line():
    # Affine from 1 to 2 (predicts 9), but a larger batch pays an extra 3 GiB (a layout change):
    # 9 does not fit; the line through (2, 5) and (9, 18.5) predicts 7 (15.8 GiB), which fits.
    def memory(b):
        return (2.0 + 1.5 * b + (3.0 if b > 4 else 0.0)) * GiB

    calls, measure = _recorder(memory)
    found = aot_figures.search_largest_batch(measure, 16 * GiB)
    assert calls == [1, 2, 9, 7] and found.batch == 7
    assert memory(8) > 16 * GiB  # 7 is indeed the largest


def test_search_probes_above_a_fitting_guess_when_memory_grows_slower():
    # The full-size CPTrans plan on v5e:4x4: 2.28 GiB at batch 1, 3.65 at 2 (the line says 11),
    # but 7.68 at 11. Refitted through (2, 3.65) and (11, 7.68) the line says 29, which fits;
    # through (11, 7.68) and (29, 15.78) it says 29 again: done.
    def memory(b):
        return (0.91 + 1.37 * b if b <= 2 else 3.65 + 0.45 * (b - 2)) * GiB

    calls, measure = _recorder(memory)
    found = aot_figures.search_largest_batch(measure, 16 * GiB)
    assert calls == [1, 2, 11, 29] and found.batch == 29
    assert memory(30) > 16 * GiB  # 29 is indeed the largest
    # Memory that does not grow at all: the batch doubles per compile, up to the budget.
    calls, measure = _recorder(lambda b: 4.0 * GiB)
    assert aot_figures.search_largest_batch(measure, 16 * GiB).batch == 16
    assert calls == [1, 2, 4, 8, 16]


def test_search_bisects_after_an_out_of_memory_compile_and_handles_the_edges():
    calls, measure = _recorder(lambda b: math.inf if b > 5 else (2.0 + 1.5 * b) * GiB)
    found = aot_figures.search_largest_batch(measure, 16 * GiB)
    # 9: no figure → bisect to 5, which fits; the line through (2, 5) and (5, 9.5) then says
    # 9, capped below the failed 9 at 8, which runs out too: 5 is the answer.
    assert calls == [1, 2, 9, 5, 8] and found.batch == 5
    # Batch 1 does not fit: 0, one compile. Batch 2 does not: 1, two compiles.
    calls, measure = _recorder(lambda b: 20 * GiB)
    assert aot_figures.search_largest_batch(measure, 16 * GiB).batch == 0 and calls == [1]
    calls, measure = _recorder(lambda b: (10.0 + 5.0 * b) * GiB)
    assert aot_figures.search_largest_batch(measure, 16 * GiB).batch == 1 and calls == [1, 2]
    # Starting from the user's batch 4 (global batch already chosen).
    calls, measure = _recorder(lambda b: (2.0 + 1.5 * b) * GiB)
    assert aot_figures.search_largest_batch(measure, 16 * GiB, first=4).batch == 9
    assert calls == [4, 5, 9]


HLO = """\
HloModule jit_iteration, is_scheduled=true
  %all-reduce-start = (f32[64,3,3,3]{3,2,1,0:T(8,128)}, f32[768]{0}) all-reduce-start(%a, %b)
  %all-reduce-done = (f32[64,3,3,3]{3,2,1,0}, f32[768]{0}) all-reduce-done(%all-reduce-start)
  %ar.2 = bf16[10]{0} all-reduce(bf16[10]{0} %c), replica_groups={{0,1,2,3}}, to_apply=%add
  %all-gather = f32[4,16]{1,0} all-gather(f32[1,16]{1,0} %d), dimensions={0}
  %fusion.7 = f32[8]{0} fusion(f32[8]{0} %all-gather), kind=kLoop, calls=%fused
  %collective-permute-start.1 = (s32[2]{0}, s32[2]{0}) collective-permute-start(%e)
"""


def test_collectives_are_counted_once_per_op_with_their_result_bytes():
    found = {k.kind: (k.count, k.bytes) for k in aot_figures.collectives(HLO)}
    assert found == {
        "all-reduce": (2, (64 * 27 + 768) * 4 + 10 * 2),
        "all-gather": (1, 64 * 4),
        "collective-permute": (1, 2 * 2 * 4),
    }
    assert aot_figures.shape_bytes("(pred[3], u8[2,2], f64[])") == 3 + 4 + 8


def _program(**fields):
    base = dict(
        flops=0.0,
        bytes_accessed=0.0,
        xla_seconds=None,
        argument_bytes=0,
        output_bytes=0,
        alias_bytes=0,
        temp_bytes=0,
        code_bytes=0,
        collectives=(),
        compile_seconds=0.0,
    )
    return aot_figures.Program(**{**base, **fields})


def test_roofline_and_memory_on_hand_made_numbers():
    chip = aot_figures.CHIPS["v5e"]
    p = _program(flops=1.97e12, bytes_accessed=8.19e9)  # 10 ms at peak, 10 ms of HBM
    r = aot_figures.roofline(p, chip.bf16_flops, chip)
    assert r.compute_s == pytest.approx(0.010) and r.memory_s == pytest.approx(0.010)
    r = aot_figures.roofline(_program(flops=1.97e12, bytes_accessed=1e9), chip.bf16_flops, chip)
    assert r.seconds == pytest.approx(0.010)  # compute bound
    # Donated outputs are the arguments' buffers: counted once.
    p = _program(argument_bytes=10, output_bytes=8, alias_bytes=6, temp_bytes=5, code_bytes=1)
    assert p.hbm_bytes == 10 + 2 + 5 + 1
    # 100 MiB all-reduced over 4 v5e chips: 2·3/4·100 MiB out at 200 GB/s.
    ar = aot_figures.Collective("all-reduce", 1, 100 * 2**20)
    seconds = aot_figures.all_reduce_seconds(_program(collectives=(ar,)), 4, chip)
    assert seconds == pytest.approx(1.5 * 100 * 2**20 / 200e9)
    assert (
        aot_figures.all_reduce_seconds(_program(collectives=(ar,)), 4, aot_figures.CHIPS["v4"])
        is None
    )


def test_peak_follows_the_precision_policy():
    chip, c = aot_figures.CHIPS["v5e"], demo.get_config()
    assert tpu_plan.mxu_peak(chip, c)[0] == pytest.approx(197e12 / 6)  # float32, highest
    c.train.matmul_precision = "default"
    assert tpu_plan.mxu_peak(chip, c)[0] == 197e12
    c.train.matmul_precision = "highest"
    c.train.compute_dtype = "bfloat16"
    assert tpu_plan.mxu_peak(chip, c)[0] == 197e12


class _FakeCompiled:
    def cost_analysis(self):
        return {"flops": 2e9, "bytes accessed": 3e6, "optimal_seconds": -5.0}

    def memory_analysis(self):
        return types.SimpleNamespace(
            argument_size_in_bytes=100,
            output_size_in_bytes=80,
            alias_size_in_bytes=60,
            temp_size_in_bytes=50,
            generated_code_size_in_bytes=10,
        )

    def as_text(self):
        return HLO


class _FakeLowered:
    def __init__(self, text):
        self.text, self.compiles = text, 0

    def as_text(self):
        return self.text

    def compile(self):
        self.compiles += 1
        return _FakeCompiled()


def test_compile_figures_are_cached_by_program_and_devices(tmp_path):
    chips = [
        types.SimpleNamespace(device_kind="TPU v5 lite", coords=(i, 0, 0), id=i) for i in (0, 1)
    ]
    lowered = _FakeLowered("module @jit_run {}")
    first = aot_figures.compile_figures(lowered, chips, str(tmp_path))
    assert lowered.compiles == 1 and not first.cached
    assert first.flops == 2e9 and first.xla_seconds is None  # a negative estimate is dropped
    assert first.hbm_bytes == 100 + 20 + 50 + 10
    again = aot_figures.compile_figures(lowered, chips, str(tmp_path))
    assert lowered.compiles == 1 and again.cached
    assert dataclasses.replace(again, cached=False) == first
    # Another program, or the same one for other devices, compiles.
    aot_figures.compile_figures(lowered, chips[:1], str(tmp_path))
    other = _FakeLowered("module @jit_run {} // changed")
    aot_figures.compile_figures(other, chips, str(tmp_path))
    assert lowered.compiles == 2 and other.compiles == 1
    # A damaged entry is compiled again and replaced; no cache dir: always compiled.
    for entry in tmp_path.glob("plan-*.json"):
        entry.write_text("{not json")
    assert not aot_figures.compile_figures(lowered, chips, str(tmp_path)).cached
    assert aot_figures.compile_figures(lowered, chips, str(tmp_path)).cached
    aot_figures.compile_figures(lowered, chips, None)
    assert lowered.compiles == 4


def test_bad_topology_names_and_missing_libtpu_are_one_line_errors(monkeypatch):
    for name in ("v9x:2x2", "v5e", "", "gpu:8"):
        with pytest.raises(PlanError, match="unknown TPU topology"):
            tpu_plan.topology_devices(name)
    monkeypatch.setitem(sys.modules, "libtpu", None)  # import libtpu → ImportError
    with pytest.raises(PlanError, match=r"pip install -e '\.\[tpu-aot\]'"):
        tpu_plan.topology_devices("v5e:2x2")


def _plan_cli(*args, prelude=""):
    code = prelude + (
        "import runpy, sys; sys.argv = ['plan', *sys.argv[1:]]; "
        "runpy.run_module('cptrans_jax.plan', run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True
    )


@pytest.mark.tpu_aot  # three Python start-ups: kept out of the default suite's time
def test_cli_errors_exit_2_with_one_line():
    r = _plan_cli("--config", "configs/demo.py", "--topology", "v9x:2x2")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown TPU topology 'v9x:2x2'")
    assert len(r.stderr.strip().splitlines()) == 1
    r = _plan_cli(
        "--config", "configs/demo.py", "--topology", "v5e:2x2",
        prelude="import sys; sys.modules['libtpu'] = None; ",
    )  # fmt: skip
    assert r.returncode == 2 and "pip install -e '.[tpu-aot]'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = _plan_cli("--config", "configs/demo.py", "--topology", "v5e:2x2", "--config.model.ngff=3")
    assert r.returncode == 2 and "unknown field" in r.stderr


# ------------------------------------------------------------------ compiled for TPU (libtpu)


@pytest.fixture(scope="module")
def v5e_2x2():
    try:
        import libtpu  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must run the TPU plan tests: install the extra (.[tpu-aot])")
        pytest.skip("needs libtpu: pip install -e '.[tpu-aot]'")
    return tpu_plan.topology_devices("v5e:2x2")


@pytest.fixture(scope="module")
def tiny_step(v5e_2x2):
    _, devices = v5e_2x2
    return tpu_plan.compile_iteration(tiny_config(), devices, 1)


@pytest.mark.tpu_aot
def test_topology_is_four_v5e_chips_and_unknown_shapes_are_refused(v5e_2x2):
    chip, devices = v5e_2x2
    assert chip.name == "TPU v5e" and len(devices) == 4
    assert {d.platform for d in devices} == {"tpu"}
    with pytest.raises(PlanError, match="libtpu does not know the topology 'v5e:3x3'"):
        tpu_plan.topology_devices("v5e:3x3")
    assert len(tpu_plan.topology_devices("v4:2x2x1")[1]) == 4  # megacore: a device per chip


@pytest.mark.tpu_aot
def test_tiny_iteration_compiles_for_v5e_2x2_with_sane_numbers(tiny_step):
    c = tiny_config()
    params = tpu_plan.parameter_count(c)
    vit = sum(
        math.prod(x.shape)
        for x in jax.tree.leaves(
            jax.eval_shape(
                lambda k: tpu_plan.init_vit_params(tpu_plan.config_lib.vit_config(c), k),
                jax.random.key(0),
            )
        )
    )
    p = tiny_step
    assert p.flops > 0 and p.bytes_accessed > 0
    # The replicated arguments: G and D with Adam's two moments (float32), and the ViT.
    assert p.argument_bytes >= 4 * (3 * params + vit)
    assert p.hbm_bytes > 4 * (3 * params + vit) and p.temp_bytes > 0
    # The state is donated: its outputs reuse the argument buffers.
    assert p.alias_bytes >= 4 * 3 * params
    kinds = {k.kind: k for k in p.collectives}
    assert kinds["all-reduce"].count >= 1
    # The gradient all-reduce carries at least every float32 gradient of G and D once.
    assert kinds["all-reduce"].bytes >= 4 * params


@pytest.mark.tpu_aot
def test_plan_reports_the_roofline_and_translate(v5e_2x2, tiny_step, monkeypatch):
    # The compile of the fixture is reused (no second full compile of the step).
    monkeypatch.setattr(tpu_plan, "compile_iteration", lambda c, devices, b, cache: tiny_step)
    plan = tpu_plan.make_plan(tiny_config(), "v5e:2x2", find_largest=False, translate_batch=2)
    assert plan.chips == 4 and plan.step is tiny_step
    assert plan.step_roofline.seconds > 0 and plan.translate.flops > 0
    lines = tpu_plan.report(plan)
    assert lines[0].startswith("v5e:2x2: 4 × TPU v5e")
    text = "\n".join(lines)
    assert "roofline     ≥" in text and "all-reduce ×" in text
    assert "frames/s per chip" in text
