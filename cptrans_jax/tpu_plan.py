"""Ahead-of-time compile and size the training step for a TPU topology, on a CPU host.

With libtpu installed (``pip install -e '.[tpu-aot]'``), a TPU topology such as ``v5e:4x4``
can be described without owning it (``jax.experimental.topologies``): its compile-only devices
make the trainer's own data mesh, and the trainer's own jitted iteration
(:func:`cptrans_jax.trainer.build_programs`, the same shardings and donation) is lowered on
shapes alone and compiled by XLA:TPU. The compiled program then says what a step needs: FLOPs
and bytes accessed per chip (``cost_analysis``), argument/output/temporary bytes per chip
(``memory_analysis``) and its collectives (in the HLO text). No data set and no ViT weights are
read; only shapes.

Step times here are **roofline bounds** from the chip's published peak FLOP/s and HBM
bandwidth (:data:`CHIPS`), never measurements; XLA's own ``optimal_seconds`` is shown only
where it is positive (it came out negative for the full iteration).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cptrans_jax import config as config_lib
from cptrans_jax import precision, trainer
from cptrans_jax import sharding as sharding_lib
from cptrans_jax.aot_figures import (
    CHIPS,
    F32_HIGHEST_PASSES,
    BatchSearch,
    Chip,
    GiB,
    Program,
    Roofline,
    all_reduce_seconds,
    compile_figures,
    roofline,
    search_largest_batch,
)
from cptrans_jax.convert import init_vit_params
from cptrans_jax.models import Generator
from cptrans_jax.models.generator import conv_impl_for

# Imported here, not when the translate plan starts: a translate that cannot be imported must
# fail the plan before the iteration's compile (minutes to an hour), not after it.
from cptrans_jax.translate import make_infer_fn


class PlanError(Exception):
    """A bad request (unknown topology, missing libtpu, a batch that cannot be split): the
    command prints its message as one line."""


# The plan has no data set to count steps with; the lr schedule's epoch length only changes a
# constant inside the step, not its shapes or cost.
PLAN_STEPS_PER_EPOCH = 1000
INSTALL = "pip install -e '.[tpu-aot]'"


# ------------------------------------------------------------------------------- topology


def require_libtpu() -> None:
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise PlanError(
            f"compiling for a TPU topology needs libtpu, which is not installed: {INSTALL} "
            "(jax[tpu] at this jax version; no TPU needed)"
        ) from None


def topology_devices(name: str) -> tuple[Chip, list[jax.Device]]:
    """The chip of ``name`` (e.g. ``v5e:4x4``, ``v5p:2x2x1``) and its compile-only devices."""
    generation = name.split(":", 1)[0].lower()
    if ":" not in name or generation not in CHIPS:
        raise PlanError(
            f"unknown TPU topology {name!r}: expected <generation>:<shape> with generation one "
            f"of {', '.join(CHIPS)} (e.g. v5e:4x4, v5p:2x2x1, v4:2x2x1)"
        )
    require_libtpu()
    from jax.experimental import topologies

    # v4 and v5p chips hold two TensorCores; "megacore" makes one device of each chip, as the
    # runtime does by default on those chips (v4 would otherwise give a device per core).
    kwargs = {"chip_config_name": "megacore"} if generation in ("v4", "v5p") else {}
    try:
        topo = topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs)
    except Exception as e:  # libtpu's INVALID_ARGUMENT for a shape it does not know
        text = " ".join(str(e).split("\n")[0].split())
        raise PlanError(f"libtpu does not know the topology {name!r}: {text}") from None
    return CHIPS[generation], list(topo.devices)


def mxu_peak(chip: Chip, c: ml_collections.ConfigDict) -> tuple[float, str]:
    """The peak FLOP/s the config's products run at, and why."""
    if c.train.compute_dtype == "bfloat16" or c.train.matmul_precision == "default":
        return chip.bf16_flops, "bfloat16 MXU peak"
    # float32 at highest. (The loss-side products are float32/highest under every policy;
    # they are a small share of the FLOPs.)
    return chip.bf16_flops / F32_HIGHEST_PASSES, (
        f"float32 at precision highest = bfloat16 peak / {F32_HIGHEST_PASSES} passes"
    )


# ------------------------------------------------------------------------------ compiling


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def plan_config(c: ml_collections.ConfigDict, global_batch: int) -> ml_collections.ConfigDict:
    """``c`` at ``global_batch``, validated as the trainer would, except that the data set and
    ViT weights it names need not exist (the plan reads neither; placeholders pass the checks
    that insist on them for real data sets)."""
    c = copy.deepcopy(c)
    c.data.global_batch_size = global_batch
    probe = copy.deepcopy(c)
    if probe.data.name != "demo":
        probe.data.data_dir = probe.data.data_dir or "unused-by-plan"
        probe.model.vit_weights = probe.model.vit_weights or "unused-by-plan"
    config_lib.validate(probe)
    return c


def compile_iteration(
    c: ml_collections.ConfigDict,
    devices: Sequence[jax.Device],
    batch_per_chip: int,
    cache_dir: str | None = None,
) -> Program:
    """The trainer's jitted iteration for ``c`` on a ``data`` mesh over ``devices``, lowered on
    shapes (state, batch of ``batch_per_chip`` per chip, ViT params, key) and compiled."""
    mesh = sharding_lib.mesh_over(devices)
    c = plan_config(c, batch_per_chip * len(devices))
    nets, programs = trainer.build_programs(c, mesh, PLAN_STEPS_PER_EPOCH)
    key = jax.eval_shape(lambda: jax.random.key(0))
    state = _abstract(jax.eval_shape(programs.init, key))
    vit = _abstract(
        jax.eval_shape(lambda k: init_vit_params(nets.vit.config, k), jax.random.key(0))
    )
    size = c.data.frame_size
    clip = (c.data.global_batch_size, trainer.clip_length(c), size, size, 3)
    batch = {k: jax.ShapeDtypeStruct(clip, jnp.float32) for k in ("A", "B")}
    return compile_figures(programs.iteration.lower(state, batch, vit, key), devices, cache_dir)


def compile_translate(
    c: ml_collections.ConfigDict, device: jax.Device, batch: int, cache_dir: str | None = None
) -> tuple[Program, int]:
    """``translate``'s jitted inference (uint8 frames in and out) of ``c``'s G on one chip at
    ``batch`` frames of ``frame_size``², compiled; also G's parameter count."""
    mesh = sharding_lib.mesh_over([device])
    # G as translate builds it from a checkpoint (translate.py's _run): conv_impl for the
    # devices, the compute dtype of its --compute_dtype (here the config's), default precision.
    generator = Generator(
        ngf=c.model.ngf,
        n_blocks=c.model.n_blocks,
        conv_impl=conv_impl_for("auto", device.platform),
        dtype=precision.compute_dtype(c.train.compute_dtype),
    )
    size = c.data.frame_size
    frames = jnp.zeros((1, size, size, 3), jnp.float32)
    params = _abstract(jax.eval_shape(generator.init, jax.random.key(0), frames)["params"])
    infer = make_infer_fn(generator, mesh)
    lowered = infer.lower(params, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8))
    count = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    return compile_figures(lowered, [device], cache_dir), count


def is_out_of_memory(e: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e)


# ---------------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class Plan:
    topology: str
    chip: Chip
    chips: int
    batch_per_chip: int
    frames_per_sample: int
    peak_flops: float
    peak_note: str
    step: Program
    step_roofline: Roofline
    all_reduce_s: float | None
    param_count: int  # G + D, what the gradient all-reduce carries
    search: BatchSearch | None
    translate: Program | None
    translate_batch: int
    translate_roofline: Roofline | None


def parameter_count(c: ml_collections.ConfigDict) -> int:
    """G's and D's parameters (the trained ones), from shapes."""
    nets = config_lib.build_networks(c)
    frame = (c.data.frame_size, c.data.frame_size)
    g_tx, d_tx, _, _ = config_lib.build_optimizers(c, PLAN_STEPS_PER_EPOCH)
    state = jax.eval_shape(
        lambda k: trainer.init_train_state(nets, g_tx, d_tx, k, frame), jax.random.key(0)
    )
    return sum(math.prod(p.shape) for p in jax.tree.leaves((state.g_params, state.d_params)))


def make_plan(
    c: ml_collections.ConfigDict,
    topology: str,
    *,
    batch_per_chip: int = 1,
    find_largest: bool = True,
    translate_batch: int = 8,
    cache_dir: str | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> Plan:
    """Compiles ``c``'s iteration for ``topology`` at ``batch_per_chip`` (and, with
    ``find_largest``, at the batches :func:`search_largest_batch` asks for) and ``translate``'s
    G forward on one chip; ``say`` hears each compile as it starts and ends."""
    if batch_per_chip < 1:
        raise PlanError(f"--batch_per_chip must be >= 1, got {batch_per_chip}")
    chip, devices = topology_devices(topology)
    n = len(devices)
    programs: dict[int, Program] = {}

    def step_at(b: int) -> float:
        if b not in programs:
            say(f"compiling the training iteration at batch {b}/chip × {n} chips …")
            try:
                programs[b] = compile_iteration(c, devices, b, cache_dir)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                say(f"  batch {b}/chip: out of memory in XLA:TPU's compile")
                return math.inf
            p = programs[b]
            say(f"  {_compiled(p)}: {p.hbm_bytes / GiB:.2f} GiB/chip")
        return programs[b].hbm_bytes

    if not math.isfinite(step_at(batch_per_chip)):
        raise PlanError(
            f"the iteration at batch {batch_per_chip}/chip does not fit {chip.name}'s HBM "
            f"({chip.hbm_bytes / GiB:.0f} GiB)"
        )
    search = None
    if find_largest:
        search = search_largest_batch(step_at, chip.hbm_bytes, first=batch_per_chip)
    step = programs[batch_per_chip]
    peak, note = mxu_peak(chip, c)
    translate = translate_roofline = None
    if translate_batch:
        say(f"compiling translate's G forward at batch {translate_batch} on one chip …")
        translate, _ = compile_translate(c, devices[0], translate_batch, cache_dir)
        translate_roofline = roofline(translate, peak, chip)
        say(f"  {_compiled(translate)}")
    return Plan(
        topology=topology,
        chip=chip,
        chips=n,
        batch_per_chip=batch_per_chip,
        frames_per_sample=trainer.clip_length(c),
        peak_flops=peak,
        peak_note=note,
        step=step,
        step_roofline=roofline(step, peak, chip),
        all_reduce_s=all_reduce_seconds(step, n, chip),
        param_count=parameter_count(c),
        search=search,
        translate=translate,
        translate_batch=translate_batch,
        translate_roofline=translate_roofline,
    )


def _compiled(p: Program) -> str:
    return f"compiled in {p.compile_seconds:.0f} s" + (
        " (figures from the cache)" if p.cached else ""
    )


def _si(x: float, unit: str) -> str:
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def report(plan: Plan) -> list[str]:
    """The plan as printed lines."""
    p, r, chip = plan.step, plan.step_roofline, plan.chip
    global_batch = plan.batch_per_chip * plan.chips
    lines = [
        f"{plan.topology}: {plan.chips} × {chip.name} "
        f"({_si(chip.bf16_flops, 'FLOP/s')} bf16, {chip.hbm_bytes / GiB:.0f} GiB HBM at "
        f"{_si(chip.hbm_bandwidth, 'B/s')}); batch {plan.batch_per_chip}/chip, "
        f"global {global_batch}",
        "training iteration (per chip):",
        f"  HBM needed   {p.hbm_bytes / GiB:.2f} GiB of {chip.hbm_bytes / GiB:.0f} GiB "
        f"(arguments {p.argument_bytes / GiB:.2f}, outputs {p.output_bytes / GiB:.2f} of "
        f"which {p.alias_bytes / GiB:.2f} in donated buffers, temporaries "
        f"{p.temp_bytes / GiB:.2f}, code {p.code_bytes / GiB:.2f})"
        + ("" if p.hbm_bytes <= chip.hbm_bytes else "  — DOES NOT FIT"),
        f"  FLOPs        {_si(p.flops, 'FLOP')} per step; {_si(p.bytes_accessed, 'B')} accessed",
        f"  roofline     ≥ {_ms(r.seconds)} per step (a bound, not a measurement: compute "
        f"{_ms(r.compute_s)} at {_si(plan.peak_flops, 'FLOP/s')} [{plan.peak_note}], HBM "
        f"{_ms(r.memory_s)})",
        f"  → slice      ≤ {1 / r.seconds:.1f} steps/s, ≤ {global_batch / r.seconds:.1f} "
        f"samples/s ({global_batch * plan.frames_per_sample / r.seconds:.1f} frames/s, "
        f"{plan.frames_per_sample} per sample)",
    ]
    if p.xla_seconds is not None:
        lines.append(f"  XLA's own estimate {_ms(p.xla_seconds)}")
    lines.append(
        f"  {_compiled(p)}; G + D: {plan.param_count / 1e6:.2f} M "
        f"parameters ({plan.param_count * 4 / 2**20:.1f} MiB of float32 gradients)"
    )
    if p.collectives:
        lines.append(
            "  collectives  "
            + "; ".join(f"{k.kind} ×{k.count}, {k.bytes / 2**20:.1f} MiB" for k in p.collectives)
        )
    else:
        lines.append("  collectives  none")
    if plan.all_reduce_s is not None:
        share = plan.all_reduce_s / r.seconds
        lines.append(
            f"  all-reduce   ≥ {_ms(plan.all_reduce_s)} over ICI "
            f"({_si(chip.ici_bandwidth or 0, 'B/s')} bidirectional), {share:.1%} of the "
            "roofline step if not overlapped"
        )
    if plan.search is not None:
        s = plan.search
        tried = ", ".join(
            f"{b}: {m / GiB:.2f} GiB" if math.isfinite(m) else f"{b}: out of memory"
            for b, m in s.tried
        )
        lines.append(
            f"largest batch that fits: {s.batch}/chip (global {s.batch * plan.chips}); "
            f"compiled {tried}"
        )
    if plan.translate is not None and plan.translate_roofline is not None:
        t, tr = plan.translate, plan.translate_roofline
        lines.append(
            f"translate (G forward, batch {plan.translate_batch} on one chip): "
            f"{t.hbm_bytes / GiB:.2f} GiB, {_si(t.flops, 'FLOP')}, roofline ≥ "
            f"{_ms(tr.seconds)} per batch → ≤ {plan.translate_batch / tr.seconds:.0f} "
            f"frames/s per chip ({_compiled(t)})"
        )
    return lines
