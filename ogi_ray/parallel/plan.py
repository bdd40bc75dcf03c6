"""The parallel plan: every choice the planner scores and the runtime builds, as one value.

    job config ``parallel:`` ──ParallelConfig (fixed fields, topology, memory budget)──┐
    model config, world size, global batch, Topology | None ───────────────────────────┴─►
        resolve_plan ──► ParallelPlan ──describe()──► the launch line
                                      ──to_dict()──► train_state.json ──from_dict()──► replay
                                      ──► parallel.apply / the pipeline builder

A ParallelPlan is frozen and validated on construction; ``from_dict`` turns a bad value
into a ConfigError naming the file and the field. What each field makes the runtime
build, and what the predictions assume it builds, is in docs/parallel.md ("The program
the predictions assume"). The planner (planner.py) enumerates exactly this space.
Imports neither torch nor Ray.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ogi_ray.config import ConfigError, from_dict
from ogi_ray.parallel.shapes import AC_MODES

ActivationCheckpoint = Literal["none", "selective", "full"]
PLAN_FIELDS = ("dp", "tp", "pp", "microbatches", "micro_batch_rows", "activation_checkpoint",
               "sequence_parallel", "reshard_after_forward")


def _positive_int(name: str, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name}: must be a positive integer, got {v!r}")


@dataclass(frozen=True, kw_only=True)
class ParallelPlan:
    """One layout of one optimizer step. Global batch = dp · microbatches · micro_batch_rows."""

    dp: int = 1  # FSDP2 data-parallel degree (mesh axis "dp")
    tp: int = 1  # tensor-parallel degree inside a node (mesh axis "tp")
    pp: int = 1  # pipeline stages (mesh axis "pp")
    # Micro-batches per optimizer step: gradient-accumulation passes when pp == 1, the
    # 1F1B schedule's micro-batches when pp > 1 (then at least pp).
    microbatches: int = 1
    micro_batch_rows: int = 1  # rows of one micro-batch on one dp replica
    activation_checkpoint: ActivationCheckpoint = "none"  # per block
    sequence_parallel: bool = False  # DTensor SequenceParallel on the block norms (tp > 1)
    # FSDP2 fully_shard(reshard_after_forward=...): True frees each block's gathered
    # parameters after its forward (ZeRO-3); False keeps them to the backward (ZeRO-2-like).
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("dp", "tp", "pp", "microbatches", "micro_batch_rows"):
            _positive_int(name, getattr(self, name))
        if self.activation_checkpoint not in AC_MODES:
            raise ValueError(f"activation_checkpoint: must be one of {list(AC_MODES)}, "
                             f"got {self.activation_checkpoint!r}")
        for name in ("sequence_parallel", "reshard_after_forward"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if self.sequence_parallel and self.tp == 1:
            raise ValueError("sequence_parallel: needs tp > 1 (it splits the TP region's norms over tp)")
        if self.pp > 1 and self.microbatches < self.pp:
            raise ValueError(f"microbatches: 1F1B needs at least pp = {self.pp}, got {self.microbatches}")
        if self.pp > 1 and self.reshard_after_forward:
            raise ValueError("reshard_after_forward: must be false with pp > 1 (stages keep their "
                             "blocks gathered across micro-batches, as torchtitan does)")

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def global_batch(self) -> int:
        return self.dp * self.microbatches * self.micro_batch_rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, *, file: str | Path | None = None, prefix: str = "") -> ParallelPlan:
        """From a mapping (train_state.json, a job config); errors name file and field."""
        try:
            return from_dict(cls, data, file=file, prefix=prefix)
        except ConfigError:
            raise
        except ValueError as e:  # raised by __post_init__, before from_dict's validate()
            key, _, msg = str(e).partition(": ")
            raise ConfigError(file, f"{prefix}.{key}" if prefix else key, msg) from None

    def describe(self) -> str:
        """One line for the launch print."""
        mb = "1F1B micro-batches" if self.pp > 1 else "micro-batches"
        shard = "reshard after forward (ZeRO-3)" if self.reshard_after_forward else \
            "keep gathered to backward (ZeRO-2-like)"
        return (f"dp={self.dp} tp={self.tp} pp={self.pp} · {self.microbatches} {mb} × "
                f"{self.micro_batch_rows} rows (global batch {self.global_batch}) · "
                f"AC {self.activation_checkpoint} · SP {'on' if self.sequence_parallel else 'off'} · "
                f"FSDP2 {shard}")


@dataclass(kw_only=True)
class ParallelConfig:
    """The job config's ``parallel`` section. Every plan field is optional: null (or
    absent) lets the planner choose it; a value fixes it. ``topology`` (a bundled name, a
    YAML file, or ``discover`` to probe the chosen tier's nodes) is what the planner scores
    on; without one, unfixed fields get defaults (plain data parallelism)."""

    dp: int | None = None
    tp: int | None = None
    pp: int | None = None
    microbatches: int | None = None
    micro_batch_rows: int | None = None
    activation_checkpoint: ActivationCheckpoint | None = None
    sequence_parallel: bool | None = None
    reshard_after_forward: bool | None = None
    topology: str = ""
    memory_gib: float | None = None  # per-rank budget the plan must fit; None: the topology's

    def validate(self) -> None:
        for name in ("dp", "tp", "pp", "microbatches", "micro_batch_rows"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name}: must be >= 1, got {v} (null or leaving it out lets the planner choose)")
        if self.memory_gib is not None and not self.memory_gib > 0:
            raise ValueError(f"memory_gib: must be > 0, got {self.memory_gib}")

    def fixed(self) -> dict[str, Any]:
        """The plan fields this config fixes."""
        return {k: getattr(self, k) for k in PLAN_FIELDS if getattr(self, k) is not None}


def default_plan(fixed: dict[str, Any], world: int, global_batch: int) -> ParallelPlan:
    """The plan without a topology to score on: the fixed fields, then plain data
    parallelism over the rest: tp = pp = 1, dp = world / (tp·pp), pp micro-batches (one
    without a pipeline), no AC or SP, FSDP2's default reshard mode (false under a pipeline)."""
    tp, pp = fixed.get("tp", 1), fixed.get("pp", 1)
    if "dp" not in fixed and world % (tp * pp):
        raise ConfigError(None, "parallel.tp", f"tp·pp = {tp * pp} does not divide the {world} workers")
    dp = fixed.get("dp", world // (tp * pp))
    rows = fixed.get("micro_batch_rows")
    m = fixed.get("microbatches", global_batch // (dp * rows) if rows else pp)
    values = dict(dp=dp, tp=tp, pp=pp, microbatches=m, activation_checkpoint="none",
                  sequence_parallel=False, reshard_after_forward=pp == 1,
                  micro_batch_rows=rows or global_batch // max(dp * m, 1))
    return _checked(values | fixed, world, global_batch)


def _checked(values: dict[str, Any], world: int, global_batch: int) -> ParallelPlan:
    try:
        plan = ParallelPlan(**values)
    except ValueError as e:
        key, _, msg = str(e).partition(": ")
        raise ConfigError(None, f"parallel.{key}", msg) from None
    if plan.world_size != world:
        raise ConfigError(None, "parallel.dp", f"dp·tp·pp = {plan.dp}·{plan.tp}·{plan.pp} = "
                          f"{plan.world_size}, but there are {world} workers")
    if plan.global_batch != global_batch:
        raise ConfigError(None, "parallel.microbatches", (
            f"dp·microbatches·micro_batch_rows = {plan.dp}·{plan.microbatches}·"
            f"{plan.micro_batch_rows} = {plan.global_batch}, but the global batch is {global_batch} rows"))
    return plan


def resolve_plan(cfg: ParallelConfig, model_cfg: Any, world: int, topology: Any | None,
                 global_batch: int, *, precision: str = "bf16", seq_len: int | None = None) -> ParallelPlan:
    """The plan for ``world`` workers: ``cfg``'s fixed fields, the planner's choice for
    the rest (scored on ``topology``; without one, ``default_plan``). A fixed choice that
    cannot work (does not divide, does not fit ``cfg.memory_gib`` or the topology's
    memory) raises a ConfigError naming the field."""
    fixed = cfg.fixed()
    if topology is None:
        return default_plan(fixed, world, global_batch)
    from ogi_ray.parallel.planner import plan_for_world  # the planner imports this module

    memory = cfg.memory_gib * 2**30 if cfg.memory_gib is not None else None
    return plan_for_world(model_cfg, world, topology, global_batch=global_batch, seq_len=seq_len,
                          fixed=fixed, memory_bytes=memory, precision=precision)


def load_plan_topology(cfg: ParallelConfig, tier: str | None = None) -> Any | None:
    """The Topology ``cfg.topology`` names: None for "", a probe of the tier's nodes for
    "discover" (needs a running Ray cluster), else a bundled name or a YAML file."""
    if not cfg.topology:
        return None
    if cfg.topology == "discover":
        from ogi_ray.parallel.discover import discover, to_topology

        return to_topology(discover(tier, probe=True), name=f"discovered-{tier or 'all'}")
    from ogi_ray.parallel.topology import load_topology

    return load_topology(cfg.topology)
