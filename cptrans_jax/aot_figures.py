"""The figures of a compiled XLA:TPU program, and the arithmetic on them.

What :mod:`cptrans_jax.tpu_plan` reads from a program compiled ahead of time for a TPU
topology — FLOPs and bytes accessed (``cost_analysis``), argument/output/temporary bytes per
chip (``memory_analysis``), the collectives of its HLO text — kept as a :class:`Program` (and
cached on disk by the lowered program's text, :func:`compile_figures`), and what is computed
from them: a roofline bound on the step time against the chip's published figures
(:data:`CHIPS`), a lower bound on the all-reduce's ICI time, and the largest batch that fits
(an affine extrapolation of per-chip memory in the batch, confirmed by compiling). Nothing here
knows the project's networks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip figures of one TPU generation."""

    name: str
    bf16_flops: float  # peak MXU FLOP/s at bfloat16
    hbm_bytes: float
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float | None  # bidirectional inter-chip bytes/s per chip (None: unpublished)


# Google Cloud TPU system-architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e),
# "key specifications" tables, as read in 2026. v4's page gives no per-chip ICI figure. HBM is
# the published capacity; the runtime reserves a little of it, so a plan within ~3 % of it is
# marginal.
GB, GiB = 1e9, 2.0**30
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 275e12, 32 * GiB, 1200 * GB, None),
    "v5e": Chip("TPU v5e", 197e12, 16 * GiB, 819 * GB, 400 * GB),
    "v5p": Chip("TPU v5p", 459e12, 95 * GiB, 2765 * GB, 1200 * GB),
    "v6e": Chip("TPU v6e", 918e12, 32 * GB, 1638 * GB, 800 * GB),
}
# jax.lax.Precision: on TPU, float32 products at HIGHEST take 6 bfloat16 MXU passes.
F32_HIGHEST_PASSES = 6


# ------------------------------------------------------------------------------ analysis


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    count: int
    bytes: int  # summed result shapes, per chip


_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2}
_DTYPE_BYTES |= {"s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8}
_SHAPE = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
# "%name = <result shape> all-reduce-start(" — the op's name follows its result shape. Async
# collectives appear as a -start/-done pair: counted once, at -start.
_OP = re.compile(r"=\s*(.*?)\s(" + "|".join(_COLLECTIVES) + r")(-start)?\(")


def shape_bytes(text: str) -> int:
    """Bytes of every ``dtype[dims]`` in an HLO shape (a tuple sums its elements)."""
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def collectives(hlo_text: str) -> list[Collective]:
    """The collectives of a compiled module's HLO text, by kind."""
    found: dict[str, list[int]] = {}
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if m:
            entry = found.setdefault(m.group(2), [0, 0])
            entry[0] += 1
            entry[1] += shape_bytes(m.group(1))
    return [Collective(k, c, b) for k, (c, b) in sorted(found.items())]


@dataclasses.dataclass(frozen=True)
class Program:
    """What one compiled program needs per chip."""

    flops: float
    bytes_accessed: float
    xla_seconds: float | None  # XLA's optimal_seconds; None when missing or not positive
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs living in donated argument buffers (the train state)
    temp_bytes: int
    code_bytes: int
    collectives: tuple[Collective, ...]
    compile_seconds: float
    cached: bool = False  # figures read from the plan cache (the compile it times was earlier)

    @property
    def hbm_bytes(self) -> int:
        """Per-chip HBM held at once: arguments, outputs not aliased to a donated argument,
        temporaries and the program itself."""
        outputs = self.output_bytes - self.alias_bytes
        return self.argument_bytes + outputs + self.temp_bytes + self.code_bytes


def analyse(compiled: Any, compile_seconds: float) -> Program:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older JAX: one dict per program
        cost = cost[0]
    mem = compiled.memory_analysis()
    optimal = float(cost.get("optimal_seconds", -1.0))
    return Program(
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        xla_seconds=optimal if optimal > 0 else None,
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes),
        collectives=tuple(collectives(compiled.as_text())),
        compile_seconds=compile_seconds,
    )


@dataclasses.dataclass(frozen=True)
class Roofline:
    compute_s: float
    memory_s: float

    @property
    def seconds(self) -> float:
        """The lower bound on the step: the slower of compute and HBM traffic."""
        return max(self.compute_s, self.memory_s)


def roofline(program: Program, peak_flops: float, chip: Chip) -> Roofline:
    """FLOPs at ``peak_flops`` and XLA's bytes accessed at the HBM bandwidth. (XLA counts every
    fused op's operands and results; data kept on chip between ops never reaches HBM, so the
    memory side can overstate the traffic.)"""
    return Roofline(program.flops / peak_flops, program.bytes_accessed / chip.hbm_bandwidth)


def all_reduce_seconds(program: Program, chips: int, chip: Chip) -> float | None:
    """A lower bound on the all-reduces' time: a ring moves 2(n−1)/n of the reduced bytes in
    and out of each chip, at best at the chip's whole ICI bandwidth."""
    if chip.ici_bandwidth is None or chips < 2:
        return None
    reduced = sum(k.bytes for k in program.collectives if k.kind == "all-reduce")
    return 2 * (chips - 1) / chips * reduced / (chip.ici_bandwidth / 2)


# ---------------------------------------------------------------------- largest batch


def affine_fit(a: tuple[int, float], b: tuple[int, float]) -> tuple[float, float]:
    """(intercept, slope) of the line through (batch, bytes) points ``a`` and ``b``."""
    (b1, m1), (b2, m2) = a, b
    if b1 == b2:
        raise ValueError("two different batch sizes are needed for a fit")
    slope = (m2 - m1) / (b2 - b1)
    return m1 - slope * b1, slope


def largest_batch(intercept: float, slope: float, capacity: float) -> int:
    """The largest batch b ≥ 0 with intercept + slope·b ≤ capacity (0: not even one)."""
    if slope <= 0:
        raise ValueError(f"memory does not grow with the batch (slope {slope:.3g} bytes)")
    return max(0, math.floor((capacity - intercept) / slope))


@dataclasses.dataclass(frozen=True)
class BatchSearch:
    batch: int  # the largest per-chip batch confirmed to fit (0: none)
    tried: tuple[tuple[int, float], ...]  # (batch, bytes) of each compile, in order


def search_largest_batch(
    measure: Callable[[int], float], capacity: float, *, first: int = 1, confirms: int = 3
) -> BatchSearch:
    """The largest per-chip batch whose ``measure`` (per-chip bytes; ``inf`` for a compile that
    ran out of memory) fits ``capacity``.

    Compiles ``first`` and ``first + 1``, extrapolates the line through them (per-chip memory is
    close to affine in the batch) and compiles the prediction. A prediction that fits is not
    the answer yet: memory can grow more slowly than the first two batches said (XLA:TPU's
    full-size CPTrans program took 7.7 GiB at batch 11 where the line said 16), so the line is
    refitted through the two largest fitting batches and its new prediction tried. One that
    does not fit becomes a ceiling, and the line is refitted through the largest fitting batch
    and it (bisected when the compile gave no figure). At most ``confirms`` compiles after the
    first two; the answer is the largest batch that compiled and fit.
    """
    tried: dict[int, float] = {}

    def at(b: int) -> float:
        if b not in tried:
            tried[b] = measure(b)
        return tried[b]

    def result(best: int) -> BatchSearch:
        return BatchSearch(best, tuple(tried.items()))

    lo, hi = first, first + 1
    if at(lo) > capacity:
        return result(0)
    if at(hi) > capacity:
        return result(lo)
    best, line = hi, affine_fit((lo, at(lo)), (hi, at(hi)))
    ceiling = math.inf  # the smallest batch known not to fit
    for _ in range(confirms):
        # Memory that did not grow between the two points says nothing: double instead.
        guess = 2 * best if line[1] <= 0 else largest_batch(*line, capacity)
        guess = int(min(guess, ceiling - 1))
        if guess <= best:
            break
        if at(guess) <= capacity:
            line, best = affine_fit((best, at(best)), (guess, at(guess))), guess
            continue
        ceiling = guess
        if math.isfinite(at(guess)):
            line = affine_fit((best, at(best)), (guess, at(guess)))
        else:  # ran out of memory without a figure: bisect
            mid = (best + guess) // 2
            line = (capacity - mid * 1.0, 1.0)
    return result(best)


def _versions() -> str:
    try:
        libtpu = importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        libtpu = "none"
    return f"jax {jax.__version__}, libtpu {libtpu}"


def compile_figures(lowered: Any, devices: Sequence[jax.Device], cache_dir: str | None) -> Program:
    """Compiles ``lowered`` and analyses it, or reads the figures of the same program compiled
    for the same devices earlier from ``cache_dir``.

    Our own cache, of figures rather than executables: JAX's persistent compilation cache
    writes entries for a compile-only TPU topology but cannot load them back (jax 0.10.2,
    libtpu 0.0.42.1: "PjRtCompiler must be constructed with a Client"), so a repeated plan would
    compile again. The key is the lowered program's text (shardings included), the devices'
    kind and coordinates, and the jax and libtpu versions.
    """
    where = [(d.device_kind, tuple(getattr(d, "coords", ())), d.id) for d in devices]
    text = "\n".join((lowered.as_text(), repr(where), _versions()))
    path = None
    if cache_dir:
        key = hashlib.sha256(text.encode()).hexdigest()[:32]
        path = os.path.join(cache_dir, f"plan-{key}.json")
        try:
            with open(path) as f:
                entry = json.load(f)
            entry["collectives"] = tuple(Collective(**k) for k in entry["collectives"])
            return dataclasses.replace(Program(**entry), cached=True)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an unreadable or older entry: compile again and replace it
    began = time.monotonic()
    program = analyse(lowered.compile(), time.monotonic() - began)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        entry = dataclasses.asdict(program)
        entry.pop("cached")
        # Written whole or not at all: a plan interrupted mid-write leaves no half entry.
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f)
        os.replace(tmp, path)
    return program
