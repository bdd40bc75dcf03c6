"""Proof-of-Learning segment replay: re-run the steps between two checkpoints and compare.

    record i ─► checkpoint i (weights, optimizer, schedule, EMA target, train state)
            ─► segment.json of checkpoint i+1: per step its data cursor, λ, micro-batch count
    world-size gloo processes (the recorded world size and threads per rank, as trained)
      ─► same model, same (dp, tp, pp) layout built as the worker builds it, rows read
         from the corpus shards by global position and split by dp rank
      ─► loop.train_step (pipeline_train_step when pp > 1) for each recorded step
      ─► full weights gathered on rank 0 ─► Merkle root
    root == record i+1's weights_root  ⇔  the segment is reproduced bit for bit

On CPU the training step is deterministic for a fixed world size and thread count (no
dropout; every random draw comes from a generator seeded by (seed, step, rank)), so the
comparison is exact. On GPU, kernels are not bit-reproducible: the replay then reports
the relative L2 distance of the weights and accepts it below ``GPU_TOLERANCE``.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

GPU_TOLERANCE = 1e-3  # relative L2 distance of replayed vs recorded weights on GPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows_for_step(table: Any, cursor: int, accum: int, dp: int, dp_rank: int, batch: int) -> list[Any]:
    """This rank's micro-batches of one step from the whole corpus table (global order,
    wrapping over epochs): the same rows the worker's stream hands it."""
    n, g = table.num_rows, dp * batch
    out = []
    for j in range(accum):
        start = cursor + j * g + dp_rank * batch
        idx = [(start + i) % n for i in range(batch)]
        out.append(table.take(idx))
    return out


def _replay_rank(rank: int, world: int, port: int, spec: dict[str, Any], result_file: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import torch.distributed as dist

    torch.set_num_threads(spec["threads"])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from ogi_ray.lineage.merkle import weights_root
        from ogi_ray.model import build
        from ogi_ray.parallel import apply as par
        from ogi_ray.parallel.device import DeviceConfig, resolve
        from ogi_ray.parallel.dims import ParallelDims
        from ogi_ray.train import checkpoint as ckpt
        from ogi_ray.train import loop
        from ogi_ray.train.config import job_from_dict
        from ogi_ray.train.data import COLUMNS, collate, seeded_generator
        from ogi_ray.train.optim import build_optimizer
        from ogi_ray.train.stepper import build_stepper

        job = job_from_dict(spec["job"])
        batch = int(spec["batch_size"] or job.data.batch_size)
        placement = resolve(DeviceConfig(device="cpu", precision=job.device.precision))
        torch.manual_seed(job.loop.seed)
        model = build(job.model)
        world_target = loop.make_world_target(model)
        # The layout built by the worker's own builder (another layout reduces in another
        # order, hence other low bits). Under pp the worker steps with accum = micro-batches.
        layout = build_stepper(model, ParallelDims.from_plan(spec["parallel"]), job.model, placement.device,
                               n_microbatches=int(spec["segment"][0]["accum"]), compile=job.device.compile)  # fmt: skip
        mesh, model = layout.mesh, layout.module
        dp_rank, dp = par.dp_rank_and_size(mesh)
        opt, sched = build_optimizer(model, job.optim, job.loop.steps)
        start = Path(spec["start_ckpt"])
        ckpt.load(start, model, opt, sched)
        if world_target is not None and (start / "world_target.pt").is_file():
            world_target.load_state_dict(torch.load(start / "world_target.pt"))
        tables: dict[int, Any] = {}  # phase → its corpus in global order, read when first needed
        for entry in spec["segment"]:
            phase = int(entry.get("phase", 0))
            if phase not in tables:
                shards = spec["shards"][str(phase)]
                tables[phase] = pa.concat_tables([pq.read_table(p, columns=COLUMNS) for p in shards]).sort_by("position")
            table = tables[phase]
            gen = seeded_generator(job.loop.seed, entry["step"], dp_rank)
            micro = [collate(t.to_pydict(), job.model, gen)
                     for t in rows_for_step(table, entry["cursor"], entry["accum"], dp, dp_rank, batch)]  # fmt: skip
            layout.step(layout.target, opt, sched, micro, cfg=job.model, placement=placement,
                        grad_clip=job.optim.grad_clip, lambdas=entry["lambdas"],
                        world_target=world_target)  # fmt: skip
        state = par.gather_full_state_dict(model, mesh)  # the checkpoint's gather (all stages)
        if rank == 0:
            Path(result_file).write_text(json.dumps({"root": weights_root(state)}))
    finally:
        dist.destroy_process_group()
    # The root is written and the group destroyed: leave without interpreter
    # finalization, where gloo can abort a finished process (docs/ray-notes.md) and so
    # fail a replay that reproduced. Errors above still propagate with their traceback.
    os._exit(0)


def replay_segment(run_dir: Any, rec_i: dict[str, Any], rec_next: dict[str, Any]) -> list[str]:
    """Replay the steps from checkpoint ``rec_i`` to ``rec_next``; [] when it reproduces."""
    import torch.multiprocessing as mp

    from ogi_ray.corpus.manifest import shard_paths
    from ogi_ray.train.phases import corpus_of

    run = Path(str(run_dir))
    where = f"replay {rec_i['step']}→{rec_next['step']}"
    seg_path = run / rec_next["checkpoint"] / "segment.json"
    if not seg_path.is_file():
        return [f"{where}: {seg_path} is missing (no per-step record of λ and data cursor)"]
    segment = json.loads(seg_path.read_text())
    job = json.loads((run / "lineage" / "configs" / f"{rec_i['config_hash']}.json").read_text())
    if job["device"]["device"] == "cuda":
        return [f"{where}: recorded on GPU; replay on CPU compares within {GPU_TOLERANCE} (not run here)"]
    state = json.loads((run / rec_next["checkpoint"] / "train_state.json").read_text())
    world, threads = int(state.get("world_size", 1)), int(state.get("threads", 1))
    layout = state.get("parallel") or {"dp": world, "tp": 1, "pp": 1}  # runs before 3-D layouts
    spec = {
        "job": job, "start_ckpt": str(run / rec_i["checkpoint"]), "segment": segment,
        "shards": {str(p): shard_paths(corpus_of(job, p)) for p in {int(e.get("phase", 0)) for e in segment}},
        "threads": threads, "parallel": layout,
        "batch_size": state.get("batch_size"),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        mp.start_processes(_replay_rank, args=(world, _free_port(), spec, str(out)), nprocs=world,
                           join=True, start_method="spawn")  # fmt: skip
        root = json.loads(out.read_text())["root"]
    if root != rec_next["weights_root"]:
        return [f"{where}: replayed weights root {root[:16]} differs from the record's {rec_next['weights_root'][:16]}"]
    return []
