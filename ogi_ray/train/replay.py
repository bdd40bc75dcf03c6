"""Proof-of-Learning segment replay: re-run the steps between two checkpoints and compare.

    record i ─► checkpoint i (sharded weights, optimizer, schedule, EMA target, state),
                or, for the first segment, the seeded initialisation at step 0
            ─► segment.json of checkpoint i+1: per step its data cursor, λ, micro-batches
    world-size gloo processes (the recorded world size and threads per rank, as trained)
      ─► the same model and (dp, tp, pp) layout, built as the worker builds it
         (train/stepper.py) and loaded from checkpoint i (checkpoint.load reshards)
      ─► each recorded step: this rank's rows read from the corpus by global position
         (train/stream.py, the worker's reader) and collated as the worker does
         (data.collate_step) ─► the step object's ``train``
      ─► the replayed state saved as the worker saves it (checkpoint.save, sharded)
    the segment is reproduced ⇔ its weights root == record i+1's weights_root, and its
    optimizer state and EMA target equal checkpoint i+1's, tensor by tensor, bit for bit

On CPU the training step is deterministic for a fixed world size and thread count (no
dropout; every random draw comes from a generator seeded by (seed, step, rank)), so the
comparison is exact. On GPU, kernels are not bit-reproducible: such segments are not
replayed here and verify says so.
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


def _replay_rank(rank: int, world: int, port: int, spec: dict[str, Any], result_file: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(spec["threads"])
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from ogi_ray.parallel.device import DeviceConfig, resolve
        from ogi_ray.parallel.dims import dp_rank_and_size
        from ogi_ray.parallel.plan import ParallelPlan
        from ogi_ray.storage import Store
        from ogi_ray.train import checkpoint as ckpt
        from ogi_ray.train.config import job_from_dict
        from ogi_ray.train.data import COLUMNS, collate_step
        from ogi_ray.train.optim import build_optimizer
        from ogi_ray.train.step import make_world_target
        from ogi_ray.train.stepper import build_stepper
        from ogi_ray.train.stream import CorpusOrder, RankStream, RowReader

        job = job_from_dict(spec["job"])
        ckpt.seed_globals(job.loop.seed, rank)  # as the worker does
        placement = resolve(DeviceConfig(device="cpu", precision=job.device.precision))
        # From a checkpoint, or (the first segment) from the seeded initialisation the
        # worker starts from: the same per-tensor rule, the same EMA target.
        start = spec["start_ckpt"]
        stepper = build_stepper(job.model, ParallelPlan.from_dict(spec["parallel"]), placement,
                                seed=None if start else job.loop.seed, compile=job.device.compile,
                                grad_clip=job.optim.grad_clip)  # fmt: skip
        dp_rank, dp = dp_rank_and_size(stepper.mesh)
        opt, sched = build_optimizer(stepper.module, job.optim, job.loop.steps)
        world_target = make_world_target(job.model, job.loop.seed, placement.device)
        if start:
            ckpt.load(Store(start), stepper.module, opt, sched, world_target)
        streams: dict[int, RankStream] = {}  # phase → this rank's reader of its corpus
        for entry in spec["segment"]:
            phase = int(entry.get("phase", 0))
            if phase not in streams:
                order = CorpusOrder(tuple(spec["orders"][str(phase)]["paths"]), tuple(spec["orders"][str(phase)]["rows"]))
                streams[phase] = RankStream(RowReader(order, COLUMNS), dp_rank, dp, int(spec["batch_size"]),
                                            lambda rows, step: rows, prefetch=False)  # fmt: skip
            rows = streams[phase].rows(int(entry["cursor"]), int(entry["accum"]))
            micro = collate_step(rows, job.model, job.loop.seed, int(entry["step"]), dp_rank)
            stepper.step.train(opt, sched, micro, lambdas=entry["lambdas"], world_target=world_target)
        # The replayed state saved as the worker saves it, for the full comparison.
        saved = ckpt.save(Store(spec["out_ckpt"]), stepper.module, opt, sched, train_state={}, world_target=world_target)
        if rank == 0:
            Path(result_file).write_text(json.dumps({"root": saved.root}))
    finally:
        dist.destroy_process_group()
    # The root is written and the group destroyed: leave without interpreter
    # finalization, where gloo can abort a finished process (docs/ray-notes.md) and so
    # fail a replay that reproduced. Errors above still propagate with their traceback.
    os._exit(0)


def _orders(job: dict[str, Any], phases: set[int], run: Any, corpus: str | None) -> dict[str, dict[str, Any]]:
    """Each replayed phase's corpus order (paths and row counts) from its manifest: the
    given ``corpus`` folder, else the one the recorded config names (relative to the run)."""
    from ogi_ray.corpus.manifest import load_manifest
    from ogi_ray.lineage.locations import corpus_location
    from ogi_ray.train.stream import CorpusOrder

    out = {}
    for p in sorted(phases):
        folder = corpus or corpus_location(job, p, run)
        order = CorpusOrder.of(folder, load_manifest(folder))
        out[str(p)] = {"paths": list(order.paths), "rows": list(order.rows)}
    return out


def _compare_state(run: Any, ckpt_rel: str, replayed: Any) -> list[str]:
    """The optimizer state and the EMA target after the replay against the recorded
    checkpoint's, tensor by tensor and bit for bit (the weights compare by root)."""
    from ogi_ray.lineage.shards import assemble, shard_index
    from ogi_ray.train.checkpoint import OPTIM_DIR, WORLD_TARGET

    problems = []
    want, got = run.sub(f"{ckpt_rel}/{OPTIM_DIR}"), replayed.sub(OPTIM_DIR)
    a, b = shard_index(want), shard_index(got)
    if sorted(a) != sorted(b):
        return [f"optimizer state holds other tensors after the replay ({sorted(set(a) ^ set(b))[:3]} …)"]
    for name in a:
        if a[name].shape != b[name].shape or not (assemble(want, a[name]) == assemble(got, b[name])).all():
            problems.append(f"optimizer state {name} differs after the replay")
    rec_wt, rep_wt = f"{ckpt_rel}/{WORLD_TARGET}", WORLD_TARGET
    if run.is_file(rec_wt) != replayed.is_file(rep_wt) or (
        run.is_file(rec_wt) and run.read_bytes(rec_wt) != replayed.read_bytes(rep_wt)
    ):
        problems.append("the EMA target encoder differs after the replay")
    return problems


def replay_segment(run_dir: Any, rec_i: dict[str, Any] | None, rec_next: dict[str, Any],
                   corpus: str | None = None) -> list[str]:  # fmt: skip
    """Replay the steps from checkpoint ``rec_i`` (None: the seeded initialisation, step
    0) to ``rec_next``; [] when the weights root, the optimizer state and the EMA target
    all reproduce. ``run_dir``: the run folder (a local path or any pyarrow URI);
    ``corpus``: the corpus to read (default: the recorded config's, relative to the run)."""
    import torch.multiprocessing as mp

    from ogi_ray.storage import Store

    run = Store(str(run_dir))
    where = f"replay {rec_i['step'] if rec_i else 0}→{rec_next['step']}"
    seg_rel = f"{rec_next['checkpoint']}/segment.json"
    if not run.is_file(seg_rel):
        return [f"{where}: {run.where(seg_rel)} is missing (no per-step record of λ and data cursor)"]
    segment = json.loads(run.read_bytes(seg_rel))
    job = json.loads(run.read_bytes(f"lineage/configs/{(rec_i or rec_next)['config_hash']}.json"))
    if job["device"]["device"] == "cuda":
        return [f"{where}: recorded on GPU; replay on CPU compares within {GPU_TOLERANCE} (not run here)"]
    state = json.loads(run.read_bytes(f"{rec_next['checkpoint']}/train_state.json"))
    world, threads = int(state.get("world_size", 1)), int(state.get("threads", 1))
    spec = {
        "job": job, "start_ckpt": run.where(rec_i["checkpoint"]) if rec_i else None, "segment": segment,
        "threads": threads, "orders": _orders(job, {int(e.get("phase", 0)) for e in segment}, run, corpus),
        # The plan the segment ran with (recorded in full since plans hold AC/SP/reshard).
        "parallel": {"dp": world, **(state.get("parallel") or {}), "microbatches": int(segment[0]["accum"])},
        "batch_size": state.get("batch_size") or job["data"]["batch_size"],
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        spec["out_ckpt"] = str(Path(tmp) / "replayed")
        out = Path(tmp) / "result.json"
        mp.start_processes(_replay_rank, args=(world, _free_port(), spec, str(out)), nprocs=world,
                           join=True, start_method="spawn")  # fmt: skip
        root = json.loads(out.read_text())["root"]
        if root != rec_next["weights_root"]:
            return [f"{where}: replayed weights root {root[:16]} differs from the record's {rec_next['weights_root'][:16]}"]
        return [f"{where}: {p}" for p in _compare_state(run, rec_next["checkpoint"], Store(spec["out_ckpt"]))]
