"""Predicted against measured peak tensor memory per rank, for layouts of the real model.

    python benchmarks/memory_model_check.py --model small --layout dp=2 --layout tp=2,sp=1,rows=4 ...

Each layout runs in its own gloo process group on this machine (one process per rank, one
thread each): the model is built and parallelised, one training step warms up (AdamW
allocates its state), then the second step runs under ``LiveTensors``, a
TorchDispatchMode that tracks every tensor storage by weak reference and re-measures
them at every op (FSDP2 frees gathered parameters with ``resize_(0)``). The largest rank's
peak is printed against ``memory.predict_peak_memory`` for the same ParallelPlan
(docs/parallel.md, "Memory model"). Layout keys: dp, tp, pp, mbs, rows, ac
(none|selective|full), sp (0|1), reshard (0|1), precision (bf16|fp32).

The layouts are built by the trainer's own ``train.stepper.build_stepper`` (activation
checkpointing, sequence parallelism and the reshard mode included, as docs/parallel.md's
"The program the predictions assume" lists) and stepped by its step objects.
"""

from __future__ import annotations

import argparse
import os
import time
import weakref
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensors(TorchDispatchMode):
    """Peak bytes of live tensor storages (CPU), counted once per storage."""

    def __init__(self, external: list[torch.Tensor]) -> None:
        super().__init__()
        self.refs: dict[int, weakref.ref] = {}
        self.peak = 0
        for t in external:
            self._add(t)

    def _add(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor):
            return
        t = getattr(t, "_local_tensor", t)  # a DTensor's shard
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        ref = self.refs.get(id(st))
        if ref is None or ref() is not st:
            self.refs[id(st)] = weakref.ref(st)

    def _live_bytes(self) -> int:
        seen: dict[int, int] = {}
        for key, ref in list(self.refs.items()):
            st = ref()
            try:
                if st is None:
                    raise RuntimeError
                n = st.nbytes()
                if n:
                    seen[st.data_ptr()] = max(n, seen.get(st.data_ptr(), 0))
            except RuntimeError:
                del self.refs[key]
        return sum(seen.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0] + tree_flatten(args)[0]:
            self._add(t)
        self.peak = max(self.peak, self._live_bytes())
        return out


def _rank(rank: int, world: int, preset_name: str, lay: dict[str, Any]) -> tuple[float, float, float]:
    """One rank of a layout (probe_ranks.run_ranks: gloo, one thread): the busiest rank's
    (peak bytes, median wall s, median CPU s) on every rank."""
    from ogi_ray.model.config import preset
    from ogi_ray.parallel.device import Placement
    from ogi_ray.parallel.plan import ParallelPlan
    from ogi_ray.train.optim import OptimConfig, build_optimizer
    from ogi_ray.train.stepper import build_stepper

    cfg = preset(preset_name)
    plan = ParallelPlan(dp=lay["dp"], tp=lay["tp"], pp=lay["pp"], microbatches=lay["mbs"], micro_batch_rows=lay["rows"],
                        activation_checkpoint=lay["ac"], sequence_parallel=lay["sp"],
                        reshard_after_forward=lay["reshard"])  # fmt: skip
    placement = Placement(torch.device("cpu"), "gloo", torch.bfloat16 if lay["precision"] == "bf16" else None)
    # The trainer's own builder: the plan's layout, AC, SP and reshard mode, as it trains.
    st = build_stepper(cfg, plan, placement, seed=0, compile=False, grad_clip=1.0)
    opt, sched = build_optimizer(st.module, OptimConfig(), 100)
    g = torch.Generator().manual_seed(1)
    rows = lay["rows"]
    micro = [{"tokens": torch.randint(0, cfg.vocab_size, (rows, cfg.n_text), generator=g),
              "text_valid": torch.ones(rows, cfg.n_text, dtype=torch.bool),
              "n_tokens": torch.tensor(rows * cfg.n_text)} for _ in range(lay["mbs"])]  # fmt: skip
    st.step.train(opt, sched, micro, lambdas={}, world_target=None)
    opt.zero_grad(set_to_none=True)
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    with LiveTensors([*st.module.parameters(), *st.module.buffers(), *state]) as live:
        st.step.train(opt, sched, micro, lambdas={}, world_target=None)
    walls, cpus = [], []
    for _ in range(lay.get("steps", 0)):  # timed steps (benchmarks/plan_check.py), after the traced one
        dist.barrier()
        t, c = time.perf_counter(), time.process_time()
        st.step.train(opt, sched, micro, lambdas={}, world_target=None)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    # (peak bytes, median wall s, median CPU s), each the largest over ranks.
    res = torch.tensor([float(live.peak), _median(walls), _median(cpus)], dtype=torch.float64)
    dist.all_reduce(res, op=dist.ReduceOp.MAX)
    return tuple(res.tolist())


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2] if xs else 0.0


def parse_layout(text: str) -> dict[str, Any]:
    lay: dict[str, Any] = dict(dp=1, tp=1, pp=1, mbs=1, rows=8, ac="none", sp=0, reshard=None, precision="bf16")
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in lay:
            raise SystemExit(f"--layout {text}: unknown key {key!r} (keys: {', '.join(lay)})")
        lay[key] = value if key in ("ac", "precision") else int(value)
    lay["sp"] = bool(lay["sp"])
    lay["reshard"] = lay["pp"] == 1 if lay["reshard"] is None else bool(lay["reshard"])
    return lay


def measure(preset_name: str, lay: dict[str, Any]) -> tuple[float, float, float]:
    """(peak bytes, median wall seconds, median CPU seconds per step) on the busiest rank;
    the times are 0 unless ``lay["steps"]`` asks for timed steps."""
    from ogi_ray.parallel.probe_ranks import run_ranks

    return run_ranks(_rank, lay["dp"] * lay["tp"] * lay["pp"], preset_name, lay)


def main() -> None:
    from ogi_ray.model.config import preset
    from ogi_ray.parallel.memory import predict_peak_memory
    from ogi_ray.parallel.plan import ParallelPlan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small", help="ogi preset (tiny, small, base)")
    ap.add_argument("--layout", action="append", default=None, help="e.g. dp=2,rows=4 (repeatable)")
    args = ap.parse_args()
    layouts = args.layout or ["dp=1", "dp=2", "dp=2,reshard=0", "tp=2,rows=4", "pp=2,mbs=2,rows=4",
                              "dp=2,ac=full", "dp=2,ac=selective"]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"{'layout':34s} {'predicted MiB':>14s} {'measured MiB':>13s} {'error':>7s}  peak at")
    for text in layouts:
        lay = parse_layout(text)
        plan = ParallelPlan(dp=lay["dp"], tp=lay["tp"], pp=lay["pp"], microbatches=lay["mbs"],
                            micro_batch_rows=lay["rows"], activation_checkpoint=lay["ac"],
                            sequence_parallel=lay["sp"], reshard_after_forward=lay["reshard"])
        pred = predict_peak_memory(plan, preset(args.model), precision=lay["precision"])
        got, _, _ = measure(args.model, lay)
        print(f"{text:34s} {pred.peak_bytes / 2**20:14.2f} {got / 2**20:13.2f} "
              f"{pred.peak_bytes / got - 1:+7.1%}  {pred.moment} ({pred.stage} stage)", flush=True)


if __name__ == "__main__":
    main()
