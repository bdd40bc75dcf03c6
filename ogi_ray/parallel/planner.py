"""The 3D-parallel planner: choose a ParallelPlan for a model on a topology.

    model (reference name | ogi preset | ModelConfig | ModelSpec | dict) ──model_spec──► ModelSpec
    Topology ──enumerate_layouts──► Layouts: every ParallelPlan the runtime implements
             (dp, tp, pp, micro-batches × activation checkpoint × SP × reshard mode),
             minus those that contradict the fixed fields
             ──cost.evaluate + memory.evaluate_memory (vectorised)──► keep those that fit
             ──sort by step time──► PlanResult(best: ScoredPlan, alternatives)
    ScoredPlan.plan ──► parallel.apply / the pipeline builder; ──to_dict / format_table──► CLI

Constraints, as Megatron-LM and torchtitan apply them: tp divides gpus_per_node (TP stays
inside a node), the heads and the MLP width; pp divides the layers; dp·tp·pp equals the
world size (layouts that leave devices idle are rejected unless ``max_idle`` allows them);
dp divides the global batch and the micro-batch count divides the per-replica batch
(at least pp of them under a pipeline). SP needs tp > 1 and tp | seq_len;
reshard_after_forward is false under a pipeline. The planner imports neither torch nor
Ray; a 10,000-GPU topology plans in milliseconds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ogi_ray.humanize import human
from ogi_ray.parallel.cost import evaluate
from ogi_ray.parallel.memory import MOMENTS, PARTS, evaluate_memory
from ogi_ray.parallel.plan import ParallelPlan
from ogi_ray.parallel.shapes import (  # noqa: F401 (re-exported: callers import them from here)
    AC_MODES,
    DEFAULT_ROWS_PER_DEVICE,
    GIB,
    REFERENCE_MODELS,
    Layouts,
    ModelSpec,
    PlanError,
    backbone_params,
    divisors,
    model_params,
    model_spec,
)
from ogi_ray.parallel.topology import Topology

MEMORY_FRACTION = 0.9  # of device memory usable by tensors: context, comm buffers, fragmentation


@dataclass
class ScoredPlan:
    plan: ParallelPlan
    idle_devices: int
    step_time_s: float
    mfu: float
    tokens_per_s: float
    memory_gib: float
    capacity_gib: float
    memory_moment: str  # when the peak happens (memory.MOMENTS)
    time: dict[str, float] = field(default_factory=dict)  # seconds, cost.evaluate's parts
    memory: dict[str, float] = field(default_factory=dict)  # GiB at the peak, memory.PARTS

    def to_dict(self) -> dict[str, Any]:
        return {**self.plan.to_dict(), "idle_devices": self.idle_devices,
                "step_time_s": self.step_time_s, "mfu": self.mfu, "tokens_per_s": self.tokens_per_s,
                "memory_gib": self.memory_gib, "capacity_gib": self.capacity_gib,
                "memory_moment": self.memory_moment, "time": dict(self.time), "memory": dict(self.memory)}


@dataclass
class PlanResult:
    model: ModelSpec
    topology: Topology
    best: ScoredPlan
    alternatives: list[ScoredPlan] = field(default_factory=list)  # best first
    candidates: int = 0
    feasible: int = 0
    seconds: float = 0.0


# --- enumeration ------------------------------------------------------------------------


def _check_fixed(spec: ModelSpec, topo: Topology, fixed: dict[str, Any], max_idle: float) -> None:
    """Reject a fixed value no layout can use, naming the field."""
    g, B = topo.gpus_per_node, spec.global_batch
    tp = fixed.get("tp")
    if tp is not None:
        for n, what in ((spec.heads, "heads"), (spec.ffn, "the MLP width"), (g, "the devices per node")):
            if n % tp:
                raise PlanError(f"{tp} must divide {what} ({n})", "parallel.tp")
    degrees = {k: fixed[k] for k in ("dp", "tp", "pp") if k in fixed}
    if degrees and not max_idle and topo.world_size % math.prod(degrees.values()):
        raise PlanError(f"{'·'.join(degrees)} = {math.prod(degrees.values())} does not divide the "
                        f"{topo.world_size} devices", f"parallel.{next(iter(degrees))}")
    pp = fixed.get("pp")
    if pp is not None and pp > spec.layers:
        raise PlanError(f"{pp} stages for {spec.layers} layers", "parallel.pp")
    for key in ("dp", "microbatches", "micro_batch_rows"):
        if key in fixed and B % fixed[key]:
            raise PlanError(f"{fixed[key]} does not divide the global batch of {B} rows", f"parallel.{key}")
    if fixed.get("sequence_parallel") and tp is not None and spec.seq_len % tp:
        raise PlanError(f"needs tp | seq_len; tp = {tp}, seq_len = {spec.seq_len}", "parallel.sequence_parallel")
    if fixed.get("reshard_after_forward") and (pp or 1) > 1:
        raise PlanError("must be false with pp > 1", "parallel.reshard_after_forward")


def enumerate_layouts(spec: ModelSpec, topo: Topology, max_idle: float = 0.0,
                      fixed: dict[str, Any] | None = None) -> Layouts:
    """Every ParallelPlan the runtime implements under the constraints, as arrays."""
    fixed = fixed or {}
    g, world, B = topo.gpus_per_node, topo.world_size, spec.global_batch
    min_world = max(1, math.ceil(world * (1 - max_idle) - 1e-9))
    tps = [t for t in divisors(g) if spec.heads % t == 0 and spec.ffn % t == 0]
    pps = sorted(set(divisors(spec.layers)) | ({fixed["pp"]} if "pp" in fixed else set()))
    rows: list[tuple[int, int, int, int]] = []
    for t in tps:
        for p in pps:
            for d in divisors(B):
                if min_world <= d * t * p <= world:
                    rows += [(d, t, p, k) for k in divisors(B // d) if p == 1 or k >= p]
    base = np.array(rows, dtype=np.float64).reshape(-1, 4)
    # Every (dp, tp, pp, m) × AC mode × SP × reshard mode, then drop what the runtime
    # does not build: SP at tp = 1 or tp ∤ seq_len, reshard_after_forward under a pipeline.
    opts = np.array([(ac, sp, raf) for ac in range(3) for sp in (0, 1) for raf in (1, 0)], dtype=np.float64)
    n, k = len(base), len(opts)
    grid = np.concatenate([np.repeat(base, k, axis=0), np.tile(opts, (n, 1))], axis=1)
    dp, tp, pp, m, ac, sp, raf = grid.T
    keep = ~((sp == 1) & ((tp == 1) | (spec.seq_len % np.maximum(tp, 1) != 0))) & ~((raf == 1) & (pp > 1))
    lay = Layouts(dp=dp, tp=tp, pp=pp, m=m, rows=B / np.maximum(dp * m, 1), ac=ac, sp=sp == 1, raf=raf == 1)
    for key, v in fixed.items():
        col = {"dp": lay.dp, "tp": lay.tp, "pp": lay.pp, "microbatches": lay.m,
               "micro_batch_rows": lay.rows, "sequence_parallel": lay.sp,
               "reshard_after_forward": lay.raf}.get(key)
        keep &= (lay.ac == AC_MODES.index(v)) if key == "activation_checkpoint" else (col == v)
    idx = np.flatnonzero(keep)
    return Layouts(dp=lay.dp[idx], tp=lay.tp[idx], pp=lay.pp[idx], m=lay.m[idx], rows=lay.rows[idx],
                   ac=lay.ac[idx], sp=lay.sp[idx], raf=lay.raf[idx])


def plan_at(lay: Layouts, i: int) -> ParallelPlan:
    return ParallelPlan(
        dp=int(lay.dp[i]), tp=int(lay.tp[i]), pp=int(lay.pp[i]), microbatches=int(lay.m[i]),
        micro_batch_rows=int(round(lay.rows[i])), activation_checkpoint=AC_MODES[int(lay.ac[i])],
        sequence_parallel=bool(lay.sp[i]), reshard_after_forward=bool(lay.raf[i]))


def _no_layout_message(spec: ModelSpec, topo: Topology, max_idle: float, fixed: dict[str, Any]) -> str:
    return (
        f"no layout with dp·tp·pp = {topo.world_size}"
        + (f" (down to {1 - max_idle:.0%} of it)" if max_idle else "")
        + f" where tp divides {topo.gpus_per_node} devices per node and {spec.heads} heads,"
        f" pp divides {spec.layers} layers and dp divides the global batch {spec.global_batch}"
        + (f", with {fixed} fixed" if fixed else "")
        + "; change the global batch or allow idle devices (--max-idle)"
    )


# --- choice -----------------------------------------------------------------------------


def _scored(lay: Layouts, t: dict[str, np.ndarray], mem: dict[str, np.ndarray], i: int,
            spec: ModelSpec, topo: Topology, capacity: float) -> ScoredPlan:
    step = float(t["step_time_s"][i])
    return ScoredPlan(
        plan=plan_at(lay, i), idle_devices=topo.world_size - int(lay.world[i]), step_time_s=step,
        mfu=float(t["mfu"][i]), tokens_per_s=spec.global_batch * spec.seq_len / step,
        memory_gib=float(mem["peak_bytes"][i] / GIB), capacity_gib=capacity / GIB,
        memory_moment=MOMENTS[int(mem["moment"][i])],
        time={k: float(v[i]) for k, v in t.items() if k not in ("step_time_s", "mfu")},
        memory={k: float(mem[k][i] / GIB) for k in PARTS},
    )


def plan(
    model: Any, topo: Topology, *, top_k: int = 5, max_idle: float = 0.0, precision: str = "bf16",
    fixed: dict[str, Any] | None = None, memory_bytes: float | None = None,
) -> PlanResult:
    """Score every allowed layout and return the fastest that fits, with runners-up.

    ``fixed``: ParallelPlan fields the result must have; ``memory_bytes``: the per-rank
    budget (default MEMORY_FRACTION of the device memory)."""
    spec = model if isinstance(model, ModelSpec) else model_spec(model, world_size=topo.world_size)
    fixed = dict(fixed or {})
    t0 = time.perf_counter()
    if not 0 <= max_idle < 1:
        raise PlanError(f"must be in [0, 1), got {max_idle}", "max_idle")
    _check_fixed(spec, topo, fixed, max_idle)
    lay = enumerate_layouts(spec, topo, max_idle, fixed)
    if lay.size == 0:
        key = f"parallel.{next(iter(fixed))}" if fixed else ""
        raise PlanError(_no_layout_message(spec, topo, max_idle, fixed), key)
    t = evaluate(spec, topo, lay, precision)
    mem = evaluate_memory(spec, lay, precision, foreach=topo.gpu != "cpu", calibration=topo.calibration)
    capacity = memory_bytes if memory_bytes is not None else topo.hbm_gib * GIB * MEMORY_FRACTION
    fits = np.flatnonzero(mem["peak_bytes"] <= capacity)
    if fits.size == 0:
        least = _scored(lay, t, mem, int(np.argmin(mem["peak_bytes"])), spec, topo, capacity)
        raise PlanError(
            f"no layout fits in memory: the smallest ({least.plan.describe()}) needs "
            f"{least.memory_gib:.3g} GiB per device, {capacity / GIB:.3g} GiB usable",
            "parallel.memory_gib" if memory_bytes is not None else "")
    # Fastest first; ties go to fewer idle devices, then the simpler layout.
    idle = topo.world_size - lay.world
    keys = [~lay.raf, lay.sp, lay.ac, lay.m, lay.pp, lay.tp, idle, t["step_time_s"]]
    order = fits[np.lexsort([np.asarray(k, dtype=np.float64)[fits] for k in keys])]
    plans = [_scored(lay, t, mem, int(i), spec, topo, capacity) for i in order[: max(top_k, 1)]]
    return PlanResult(spec, topo, plans[0], plans, candidates=lay.size,
                      feasible=int(fits.size), seconds=time.perf_counter() - t0)


def topology_for_world(topology: Topology, world_size: int) -> Topology:
    """``topology``'s hardware cut to ``world_size`` devices. A one-node CPU topology with
    more workers than devices is shared (``Topology.shared_node``): workers on fractional
    CPUs split the node's compute and memory."""
    if topology.gpu == "cpu" and topology.nodes == 1 and world_size > topology.gpus_per_node:
        return topology.shared_node(world_size)
    try:
        return topology.for_world(world_size)
    except ValueError as e:
        raise PlanError(str(e).partition(": ")[2], "world_size") from None


def plan_for_world(
    model_cfg_like: Any, world_size: int, topology: Topology, *,
    global_batch: int | None = None, seq_len: int | None = None, precision: str = "bf16",
    fixed: dict[str, Any] | None = None, memory_bytes: float | None = None,
) -> ParallelPlan:
    """The plan for ``world_size`` devices of ``topology``'s hardware (resolve_plan's entry).

    A model without its own global batch gets DEFAULT_ROWS_PER_DEVICE rows per device."""
    spec = model_spec(model_cfg_like, global_batch=global_batch, seq_len=seq_len, world_size=world_size)
    topo = topology_for_world(topology, world_size)
    return plan(spec, topo, top_k=1, precision=precision, fixed=fixed, memory_bytes=memory_bytes).best.plan


# --- presentation -----------------------------------------------------------------------


def _t(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x * 1e3:.3g}ms" if x < 1 else f"{x:.3g}s"


def format_table(result: PlanResult) -> str:
    s, t = result.model, result.topology
    head = (
        f"model {s.name}: {human(s.params)} params, {s.layers} layers, hidden {s.hidden}, "
        f"{s.heads} heads, seq {s.seq_len}, global batch {s.global_batch}\n"
        f"topology {t.name or '-'}: {t.nodes} x {t.gpus_per_node} {t.gpu} "
        f"({t.peak_tflops:g} TFLOP/s, {t.hbm_gib:g} GiB, intra {t.intra_node_gbps:g} Gb/s, "
        f"inter {t.inter_node_gbps:g} Gb/s)\n"
        f"{result.candidates} layouts scored, {result.feasible} fit memory, "
        f"{result.seconds * 1e3:.0f} ms\n"
    )
    cols = ["#", "dp", "tp", "pp", "m", "rows", "AC", "SP", "reshard", "step", "MFU", "mem GiB",
            "bubble", "compute", "recomp", "tp-comm", "pp-p2p", "dp-exposed"]
    rows = []
    for k, p in enumerate(result.alternatives, 1):
        q = p.plan
        rows.append([
            str(k), str(q.dp), str(q.tp), str(q.pp), str(q.microbatches), str(q.micro_batch_rows),
            q.activation_checkpoint, "on" if q.sequence_parallel else "-",
            "yes" if q.reshard_after_forward else "no", _t(p.step_time_s), f"{p.mfu:.1%}",
            f"{p.memory_gib:.3g}/{p.capacity_gib:.3g}", f"{p.time['bubble_fraction']:.1%}",
            _t(p.time["compute_s"]), _t(p.time["recompute_s"]), _t(p.time["tp_comm_s"]),
            _t(p.time["pp_p2p_s"]), _t(p.time["dp_exposed_s"]),
        ])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return head + "\n".join(lines)

