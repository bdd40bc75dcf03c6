"""The 3D-parallel planner: choose (dp, tp, pp, micro-batches) for a model on a topology.

    model (reference name | ogi preset | ModelConfig | ModelSpec | dict) ──model_spec──► ModelSpec
    Topology ──enumerate_layouts──► candidate arrays (dp, tp, pp, m, dp sharding, recompute)
             ──cost.evaluate (vectorised)──► keep those that fit memory ──sort by step time──►
    PlanResult(best: Plan, alternatives: [Plan]) ──format_table / Plan.to_dict──► CLI, driver

Constraints, as Megatron-LM and torchtitan apply them: tp divides gpus_per_node (TP stays
inside a node) and the number of heads; pp divides the layers; dp·tp·pp equals the world
size (layouts that leave devices idle are rejected unless ``max_idle`` allows them);
dp divides the global batch and the micro-batch count divides the per-replica batch.
The planner imports neither torch nor Ray; a 10,000-GPU topology plans in milliseconds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ogi_ray.config import ConfigError, from_dict
from ogi_ray.parallel.cost import GIB, CostParams, ModelSpec, evaluate
from ogi_ray.parallel.topology import Topology


class PlanError(ConfigError):
    """No layout satisfies the constraints, or none fits in memory."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__("<plan>", key, message)


# Published configurations to plan for (not trainable presets).
REFERENCE_MODELS: dict[str, dict[str, Any]] = {
    # Brown et al. 2020, Table 2.1: 96 layers, d 12288, 96 heads, 2048 context, batch
    # 3.2M tokens = 1536 sequences; vocabulary padded to 51200 as in Megatron-LM.
    "gpt3-175b": dict(params=175e9, layers=96, hidden=12288, heads=96, seq_len=2048,
                      global_batch=1536, vocab=51200),
    # Narayanan et al. 2021, Table 1 (1T row): 128 layers, h 25600, 160 heads, batch 3072.
    "megatron-1t": dict(params=1.008e12, layers=128, hidden=25600, heads=160, seq_len=2048,
                        global_batch=3072, vocab=51200),
}
DEFAULT_ROWS_PER_DEVICE = 8  # the training config's default data.batch_size


@dataclass
class Plan:
    dp: int
    tp: int
    pp: int
    microbatches: int
    micro_batch_size: int
    dp_sharding: str  # "zero1" (distributed optimizer) | "fsdp" (ZeRO-3)
    recompute: str  # "selective" (fused attention only) | "full"
    world_size: int
    idle_devices: int
    step_time_s: float
    mfu: float
    hbm_util: float  # fraction of HBM bandwidth used over the step (nan if unknown)
    tokens_per_s: float
    memory_gib: float
    capacity_gib: float
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    compute_s: float
    tp_comm_s: float
    pp_p2p_s: float
    pp_bubble_s: float
    bubble_fraction: float
    dp_comm_s: float
    dp_exposed_s: float
    optimizer_s: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}


@dataclass
class PlanResult:
    model: ModelSpec
    topology: Topology
    best: Plan
    alternatives: list[Plan] = field(default_factory=list)  # best first
    candidates: int = 0
    feasible: int = 0
    seconds: float = 0.0


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


# --- model description ----------------------------------------------------------------------


def backbone_params(cfg: Any) -> int:
    """Parameters of the transformer backbone of an ogi_ray ModelConfig, counted analytically.

    Per block q, k, v, o (4d²), SwiGLU w1, w3, w2 (3·d·hidden_dim) and two RMSNorms (2d);
    plus token embedding and LM head (2·V·d) and the final norm (d). The modality
    embedders and heads are left out: d × a few hundred each, under 0.1 % of the ``small``
    preset. Counted, not built: building the model would import torch into the planner.
    """
    d, hid = cfg.dim, cfg.hidden_dim
    return cfg.n_layers * (4 * d * d + 3 * d * hid + 2 * d) + 2 * cfg.vocab_size * d + d


def _spec_from_model_config(cfg: Any, global_batch: int, seq_len: int | None) -> ModelSpec:
    return from_dict(ModelSpec, dict(
        name=getattr(cfg, "preset", "model"), params=float(backbone_params(cfg)),
        layers=cfg.n_layers, hidden=cfg.dim, heads=cfg.n_heads,
        seq_len=seq_len or cfg.max_seq_len, global_batch=global_batch,
        vocab=cfg.vocab_size, ffn_hidden=cfg.hidden_dim, gated_mlp=True), file="<model>")


def model_spec(
    model: Any, *, global_batch: int | None = None, seq_len: int | None = None,
    world_size: int = 1,
) -> ModelSpec:
    """Normalise what callers have into a ModelSpec.

    ``model``: a ModelSpec; a name from REFERENCE_MODELS or an ``ogi_ray.model`` preset; a
    mapping of ModelSpec fields; or a ModelConfig-like object (dim, n_layers, n_heads, ...).
    ``global_batch``/``seq_len`` override the model's; a model without a batch gets
    DEFAULT_ROWS_PER_DEVICE sequences per device of ``world_size``.
    """
    default_batch = global_batch or DEFAULT_ROWS_PER_DEVICE * world_size
    if isinstance(model, ModelSpec):
        data = asdict(model)
    elif isinstance(model, str) and model in REFERENCE_MODELS:
        data = dict(REFERENCE_MODELS[model], name=model)
    elif isinstance(model, str):
        # Imported here: ogi_ray.model's package imports torch.
        from ogi_ray.model.config import preset

        try:
            cfg = preset(model)
        except ValueError as e:
            raise PlanError(f"{e}; or one of {sorted(REFERENCE_MODELS)}", "model") from None
        return _spec_from_model_config(cfg, default_batch, seq_len)
    elif isinstance(model, dict):
        data = dict(model)
        data.setdefault("global_batch", default_batch)
    elif hasattr(model, "n_layers") and hasattr(model, "dim"):
        return _spec_from_model_config(model, default_batch, seq_len)
    else:
        raise PlanError(f"cannot describe a model from {type(model).__name__}", "model")
    if global_batch:
        data["global_batch"] = global_batch
    if seq_len:
        data["seq_len"] = seq_len
    return from_dict(ModelSpec, data, file="<model>")


# --- enumeration and choice -----------------------------------------------------------------


def enumerate_layouts(spec: ModelSpec, topo: Topology, max_idle: float = 0.0) -> dict[str, np.ndarray]:
    """Every layout allowed by the constraints, as arrays (one entry per candidate)."""
    g, world, batch = topo.gpus_per_node, topo.world_size, spec.global_batch
    min_world = max(1, math.ceil(world * (1 - max_idle) - 1e-9))
    tps = [t for t in divisors(g) if spec.heads % t == 0 and spec.ffn % t == 0]
    pps = divisors(spec.layers)
    batch_divs = divisors(batch)
    cols: dict[str, list[np.ndarray]] = {"dp": [], "tp": [], "pp": [], "m": []}
    for t in tps:
        for p in pps:
            for d in batch_divs:
                if not min_world <= d * t * p <= world:
                    continue
                per_replica = batch // d
                ms = np.asarray([x for x in batch_divs if x <= per_replica and per_replica % x == 0])
                for key, v in (("dp", d), ("tp", t), ("pp", p)):
                    cols[key].append(np.full(ms.size, v))
                cols["m"].append(ms)
    if not cols["m"]:
        return {k: np.zeros(0, dtype=np.int64) for k in ("dp", "tp", "pp", "m", "fsdp", "full")}
    base = {k: np.concatenate(v).astype(np.int64) for k, v in cols.items()}
    # Each (dp, tp, pp, m) with both DP shardings and both recomputation policies.
    out = {k: np.tile(v, 4) for k, v in base.items()}
    n = base["m"].size
    out["fsdp"] = np.repeat(np.array([False, True, False, True]), n)
    out["full"] = np.repeat(np.array([False, False, True, True]), n)
    return out


def _no_layout_message(spec: ModelSpec, topo: Topology, max_idle: float) -> str:
    return (
        f"no layout with dp·tp·pp = {topo.world_size}"
        + (f" (down to {1 - max_idle:.0%} of it)" if max_idle else "")
        + f" where tp divides {topo.gpus_per_node} devices per node and {spec.heads} heads,"
        f" pp divides {spec.layers} layers and dp divides the global batch {spec.global_batch};"
        " change the global batch or allow idle devices (--max-idle)"
    )


def _plan_at(res: dict[str, np.ndarray], c: dict[str, np.ndarray], i: int,
             spec: ModelSpec, topo: Topology) -> Plan:
    used = int(c["dp"][i] * c["tp"][i] * c["pp"][i])
    step = float(res["step_time_s"][i])
    return Plan(
        dp=int(c["dp"][i]), tp=int(c["tp"][i]), pp=int(c["pp"][i]), microbatches=int(c["m"][i]),
        micro_batch_size=int(round(res["micro_batch"][i])),
        dp_sharding="fsdp" if c["fsdp"][i] else "zero1",
        recompute="full" if c["full"][i] else "selective",
        world_size=used, idle_devices=topo.world_size - used,
        step_time_s=step, mfu=float(res["mfu"][i]), hbm_util=float(res["hbm_util"][i]),
        tokens_per_s=spec.global_batch * spec.seq_len / step,
        memory_gib=float(res["memory_bytes"][i] / GIB),
        capacity_gib=float(res["capacity_bytes"][i] / GIB),
        weights_gib=float(res["weights_bytes"][i] / GIB),
        grads_gib=float(res["grads_bytes"][i] / GIB),
        optimizer_gib=float(res["optimizer_bytes"][i] / GIB),
        activations_gib=float(res["activation_bytes"][i] / GIB),
        compute_s=float(res["compute_s"][i]), tp_comm_s=float(res["tp_comm_s"][i]),
        pp_p2p_s=float(res["pp_p2p_s"][i]), pp_bubble_s=float(res["pp_bubble_s"][i]),
        bubble_fraction=float(res["bubble_fraction"][i]), dp_comm_s=float(res["dp_comm_s"][i]),
        dp_exposed_s=float(res["dp_exposed_s"][i]), optimizer_s=float(res["optimizer_s"][i]),
    )


def plan(
    model: Any, topo: Topology, *, top_k: int = 5, max_idle: float = 0.0,
    params: CostParams | None = None,
) -> PlanResult:
    """Score every allowed layout and return the fastest that fits, with runners-up."""
    spec = model if isinstance(model, ModelSpec) else model_spec(model, world_size=topo.world_size)
    t0 = time.perf_counter()
    if not 0 <= max_idle < 1:
        raise PlanError(f"must be in [0, 1), got {max_idle}", "max_idle")
    c = enumerate_layouts(spec, topo, max_idle)
    if c["m"].size == 0:
        raise PlanError(_no_layout_message(spec, topo, max_idle))
    res = evaluate(spec, topo, c["dp"], c["tp"], c["pp"], c["m"], c["fsdp"], c["full"], params)
    fits = np.flatnonzero(res["fits"])
    if fits.size == 0:
        i = int(np.argmin(res["memory_bytes"]))
        least = _plan_at(res, c, i, spec, topo)
        raise PlanError(
            f"no layout fits in memory: the smallest (dp={least.dp}, tp={least.tp}, "
            f"pp={least.pp}, m={least.microbatches}, {least.dp_sharding}, "
            f"{least.recompute} recompute) needs {least.memory_gib:.1f} GiB per device, "
            f"{least.capacity_gib:.1f} GiB usable of {topo.hbm_gib:g} GiB"
        )
    # Fastest first; ties go to fewer idle devices, then the simpler layout.
    idle = topo.world_size - c["dp"] * c["tp"] * c["pp"]
    keys = [c["full"], c["fsdp"], c["m"], c["pp"], c["tp"], idle, res["step_time_s"]]
    order = fits[np.lexsort([k[fits] for k in keys])]
    plans = [_plan_at(res, c, int(i), spec, topo) for i in order[: max(top_k, 1)]]
    return PlanResult(spec, topo, plans[0], plans, candidates=int(c["m"].size),
                      feasible=int(fits.size), seconds=time.perf_counter() - t0)


def plan_for_world(
    model_cfg_like: Any, world_size: int, topology: Topology, *,
    global_batch: int | None = None, seq_len: int | None = None,
    params: CostParams | None = None,
) -> Plan:
    """The layout for ``world_size`` devices of ``topology``'s hardware (training driver entry).

    A model without its own global batch gets DEFAULT_ROWS_PER_DEVICE rows per device.
    """
    spec = model_spec(model_cfg_like, global_batch=global_batch, seq_len=seq_len,
                      world_size=world_size)
    try:
        topo = topology.for_world(world_size)
    except ValueError as e:
        raise PlanError(str(e).partition(": ")[2], "world_size") from None
    return plan(spec, topo, top_k=1, params=params).best


# --- presentation ---------------------------------------------------------------------------


def _t(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x * 1e3:.3g}ms" if x < 1 else f"{x:.3g}s"


def format_table(result: PlanResult) -> str:
    s, t = result.model, result.topology
    head = (
        f"model {s.name}: {s.params / 1e9:.4g}B params, {s.layers} layers, hidden {s.hidden}, "
        f"{s.heads} heads, seq {s.seq_len}, global batch {s.global_batch}\n"
        f"topology {t.name or '-'}: {t.nodes} x {t.gpus_per_node} {t.gpu} "
        f"({t.peak_tflops:g} TFLOP/s, {t.hbm_gib:g} GiB, intra {t.intra_node_gbps:g} Gb/s, "
        f"inter {t.inter_node_gbps:g} Gb/s)\n"
        f"{result.candidates} layouts scored, {result.feasible} fit memory, "
        f"{result.seconds * 1e3:.0f} ms\n"
    )
    cols = ["#", "dp", "tp", "pp", "m", "mbs", "dp-shard", "recomp", "step", "MFU", "HBM-bw",
            "mem GiB", "bubble", "compute", "tp-comm", "pp-p2p", "dp-exposed"]
    rows = []
    for k, p in enumerate(result.alternatives, 1):
        rows.append([
            str(k), str(p.dp), str(p.tp), str(p.pp), str(p.microbatches), str(p.micro_batch_size),
            p.dp_sharding, p.recompute, _t(p.step_time_s), f"{p.mfu:.1%}",
            "-" if math.isnan(p.hbm_util) else f"{p.hbm_util:.0%}",
            f"{p.memory_gib:.1f}/{p.capacity_gib:.0f}", f"{p.bubble_fraction:.1%}",
            _t(p.compute_s), _t(p.tp_comm_s), _t(p.pp_p2p_s), _t(p.dp_exposed_s),
        ])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return head + "\n".join(lines)
