"""Probes that need several processes: a gloo ring, FSDP2 and TP at the model's own shapes.

    run_ranks(fn, world, *args) ── spawn ``world`` processes on one gloo group (a free
        localhost port), each runs fn(rank, world, *args) ──► rank 0's return value
    probe_collective ── all-reduce of a small and a large message ──► bus Gbit/s, α µs
    probe_fsdp(spec, rows) ── k real ogi Blocks, plain and under FSDP2 fully_shard (one
        group per block and the root), forward + backward in every rank at once
        ──► (sharded s, plain s) ──fit_fsdp_overhead──► dp_group_overhead_us
    probe_tp(spec, rows) ── the same blocks tensor-parallel over the ranks (tp_plan)
        ──► s ──fit_tp_overhead (less cost.block_seconds at tp 2)──► tp_module_overhead_us

The one-process wrapper probe (calibrate.probe_wrapper_overheads) prices FSDP2's Python
hooks on an 8×8 linear (fsdp_group_overhead_us, charged at any dp); this one measures
what a group costs at the model's sizes with every rank of the node busy and dp > 1:
gathers, copy-in/out, reduce-scatters and the waits between ranks that processes
sharing a host's cores incur, beyond the ring model's transfer time and the hooks. Called by
calibrate.probe_calibration; torch is imported inside the functions.
"""

from __future__ import annotations

import copy
import socket
from typing import Any

from ogi_ray.parallel.shapes import ModelSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, fn: Any, args: tuple, threads: int, backend: str,
               out: Any) -> None:  # fmt: skip
    import os

    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        res = fn(rank, world, *args)
        if rank == 0:
            out.put(res)
    finally:
        dist.destroy_process_group()
    # About 1 run in 4 of an FSDP2 step on gloo (torch 2.13) aborts at interpreter exit,
    # after destroy_process_group ("terminate called without an active exception", a C++
    # thread object destroyed while joinable), and torch.multiprocessing then fails the
    # whole run although the result is already sent. Nothing is left to flush here.
    os._exit(0)


def run_ranks(fn: Any, world: int, *args: Any, threads: int = 1, backend: str = "gloo") -> Any:
    """``fn(rank, world, *args)`` in ``world`` spawned processes on one process group of
    ``backend``, ``threads`` torch threads each (one: a core per rank, as the measured
    layouts run); rank 0's result. ``fn`` must be importable (a module-level function, or
    one of the running script's). The probes here and the benchmarks' ranks use it."""
    import torch.multiprocessing as mp

    q = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_rank_main, args=(world, free_port(), fn, args, threads, backend, q), nprocs=world,
                       start_method="spawn")  # fmt: skip
    return q.get()


def _all_reduce_times(rank: int, world: int, sizes: list[int]) -> list[float]:
    import torch
    import torch.distributed as dist

    from ogi_ray.parallel.calibrate import best_time

    times = []
    for n in sizes:
        x = torch.ones(n // 4)
        times.append(best_time(lambda x=x: dist.all_reduce(x), 5, lambda: None))
    return times


def probe_collective(world: int = 2, sizes: tuple[int, ...] = (4096, 4 * 2**20)) -> tuple[float, float]:
    """(bus Gbit/s, alpha µs per ring step) of a gloo all-reduce among ``world`` local
    processes: t = 2(n−1)·α + 2(n−1)/n·S/B, solved from a small and a large message."""
    t_small, t_big = run_ranks(_all_reduce_times, world, list(sizes))
    f = 2 * (world - 1) / world
    bw = f * (sizes[1] - sizes[0]) / max(t_big - t_small, 1e-9)
    alpha = max(t_small - f * sizes[0] / bw, 0.0) / (2 * (world - 1))
    return bw * 8 / 1e9, alpha * 1e6


def _stack(spec: ModelSpec, blocks: int) -> Any:
    """``blocks`` ogi Blocks of ``spec``'s shape in one module (an FSDP2 root group needs a
    forward to hook)."""
    from torch import nn

    from ogi_ray.model.transformer import Block
    from ogi_ray.parallel.calibrate import ogi_block_config

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(Block(ogi_block_config(spec)) for _ in range(blocks))

        def forward(self, x: Any, cos: Any, sin: Any, mask: Any) -> Any:
            for b in self.layers:
                x = b(x, cos, sin, mask)
            return x

    return Stack()


def _step(model: Any, spec: ModelSpec, rows: int, precision: str) -> Any:
    """A closure: zero the grads, forward under the step's autocast on x (rows, S, h),
    ``.backward`` (FSDP2 reduce-scatters on it; autograd.grad would skip its hooks)."""
    import torch

    from ogi_ray.parallel.calibrate import autocast_context, block_inputs

    x, cos, sin, mask = block_inputs(spec, rows)
    grad = torch.randn(rows, spec.seq_len, spec.hidden)

    def run() -> None:
        model.zero_grad(set_to_none=True)
        with autocast_context("cpu", precision):
            y = model(x, cos, sin, mask)  # (rows, S, h)
        y.backward(grad)

    return run


def _fsdp_times(rank: int, world: int, spec: ModelSpec, rows: int, blocks: int, precision: str,
                repeats: int) -> tuple[float, float]:
    """(sharded, plain) best seconds of one forward + backward of ``blocks`` ogi Blocks on
    this rank's ``rows`` rows, the slower rank's figure (every rank times the same code)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from ogi_ray.parallel.calibrate import best_time

    torch.manual_seed(0)
    plain = _stack(spec, blocks)
    sharded = copy.deepcopy(plain)
    mesh = init_device_mesh("cpu", (world,))
    for b in sharded.layers:
        fully_shard(b, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    step = lambda m: _step(m, spec, rows, precision)  # noqa: E731
    res = torch.tensor([best_time(step(sharded), repeats, dist.barrier), best_time(step(plain), repeats, lambda: None)],
                       dtype=torch.float64)  # fmt: skip
    dist.all_reduce(res, op=dist.ReduceOp.MAX)
    return float(res[0]), float(res[1])


def _tp_times(rank: int, world: int, spec: ModelSpec, rows: int, blocks: int, precision: str,
              repeats: int) -> float:
    """Best seconds of one forward + backward of ``blocks`` ogi Blocks tensor-parallel over
    ``world`` ranks (parallel.apply.tp_plan: q/k/v/w1/w3 column-, wo/w2 row-parallel), the
    slower rank's figure."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    from ogi_ray.parallel.apply import tp_plan
    from ogi_ray.parallel.calibrate import best_time

    torch.manual_seed(0)  # the same weights and inputs on every rank, as TP assumes
    model = _stack(spec, blocks)
    mesh = init_device_mesh("cpu", (world,))
    for b in model.layers:
        parallelize_module(b, mesh, tp_plan())
    res = torch.tensor([best_time(_step(model, spec, rows, precision), repeats, dist.barrier)], dtype=torch.float64)
    dist.all_reduce(res, op=dist.ReduceOp.MAX)
    return float(res[0])


def probe_tp(spec: ModelSpec, rows: int, *, world: int = 2, blocks: int = 2, precision: str = "bf16",
             repeats: int = 3) -> float:
    """Seconds of forward + backward of ``blocks`` real ogi Blocks for ``rows`` rows,
    tensor-parallel over ``world`` ranks at once."""
    return run_ranks(_tp_times, world, spec, rows, blocks, precision, repeats)


def probe_fsdp(spec: ModelSpec, rows: int, *, world: int = 2, blocks: int = 2, precision: str = "bf16",
               repeats: int = 3) -> tuple[float, float]:
    """(sharded, plain) seconds of forward + backward of ``blocks`` real ogi Blocks for
    ``rows`` rows per rank, in ``world`` ranks at once: under FSDP2 (one group per block
    and the root, reshard after forward) and unsharded on the same cores."""
    return run_ranks(_fsdp_times, world, spec, rows, blocks, precision, repeats)


def fit_fsdp_overhead(spec: ModelSpec, blocks: int, world: int, sharded_s: float, plain_s: float,
                      bus_gbps: float, alpha_us: float, hook_us: float) -> float:
    """dp_group_overhead_us: the probe's sharded − plain time, less what the cost model
    already charges a group, spread over the ``blocks`` + 1 groups: the transfers of its
    DP term with reshard after forward (3 passes of (n−1)/n · 4 bytes · the blocks'
    parameters over the bus, (n−1)·α per group and pass) and the hooks' Python cost
    (``hook_us`` per group, fsdp_group_overhead_us). 0 when nothing is left."""
    params = blocks * (spec.layer_params + 2 * spec.hidden)  # fp32 parameters, norms included
    groups = blocks + 1
    ring = 3 * ((world - 1) / world * 4 * params / (bus_gbps * 1e9 / 8) + groups * (world - 1) * alpha_us * 1e-6)
    return max((sharded_s - plain_s - ring) / groups * 1e6 - hook_us, 0.0)


def fit_tp_overhead(spec: ModelSpec, rows: int, blocks: int, tp_s: float, cal: Any, precision: str = "bf16") -> float:
    """tp_module_overhead_us: a measured TP block (``tp_s`` / ``blocks``) less what the cost
    model charges it at ``cal``'s constants (cost.block_seconds at tp 2: compute and the
    all-reduces), spread over its TP-wrapped linears (7, 6 without a gate). It holds what
    the one-process wrapper probe cannot see: DTensor dispatch at real sizes and the
    waits of busy ranks at each all-reduce. 0 when nothing is left."""
    from ogi_ray.parallel.cost import GEMMS_PER_BLOCK, block_seconds

    compute, comm = block_seconds(spec, rows, 2, cal, precision)
    modules = GEMMS_PER_BLOCK - (0 if spec.gated_mlp else 1)
    return max((tp_s / blocks - compute - comm) / modules, 0.0) * 1e6
