"""The Ray boundary of training: ``train_func(config)`` runs once per Ray Train worker.

    config dict ─► JobConfig ─► placement (device/backend) ─► plain model
      ─► stepper.build_stepper (parallel.apply, or pipeline stages when pp > 1) ─► AdamW
         + schedule ─► resume from Ray's checkpoint
      ─► each step: k global micro-batches from the phase's corpus stream (every dp rank
         sees the same global order and takes its slice: the data cursor is a global row
         number); at a phase's first step the tuner restarts from the phase's λ
         ─► loop.train_step (λ from the LossWeightTuner actor, fetched without blocking)
         ─► metrics (all-reduced) ─► metrics.jsonl (rank 0), tuner.report (fire and forget)
      ─► each checkpoint: held-out eval ─► checkpoint.save ─► lineage marker
         ─► ray.train.report(checkpoint) ─► LineageRegistry.append

Only this module touches ``ray.train``; the step itself is plain PyTorch (loop.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ogi_ray.canonical import canonical_json
from ogi_ray.lineage.record import checkpoint_files, make_record, record_hash
from ogi_ray.model import build
from ogi_ray.parallel import apply as par
from ogi_ray.parallel.device import peak_flops, resolve
from ogi_ray.parallel.dims import axis_rank
from ogi_ray.scaling.batch import GradientNoiseScale, cap_batch
from ogi_ray.train import checkpoint as ckpt
from ogi_ray.train import loop
from ogi_ray.train.config import job_from_dict
from ogi_ray.train.data import collate, read_heldout, seeded_generator
from ogi_ray.train.optim import build_optimizer
from ogi_ray.train.phases import Phase, dataset_key, phase_at
from ogi_ray.train.stepper import build_stepper
from ogi_ray.train.tuner import normalise


def global_row_stream(shard: Any, rows: int, start: int) -> Iterator[Any]:
    """Endless pyarrow tables of ``rows`` consecutive rows of the corpus order (wrapping
    over epochs), beginning at global row ``start``. Every rank reads the same stream."""
    import pyarrow as pa

    carry, pos = None, 0
    while True:
        for batch in shard.iter_batches(batch_size=rows, batch_format="pyarrow"):
            n = batch.num_rows
            if pos + n <= start:  # before the cursor: skip without decoding
                pos += n
                continue
            if pos < start:
                batch, pos = batch.slice(start - pos), start
            pos += batch.num_rows
            carry = batch if carry is None else pa.concat_tables([carry, batch])
            while carry.num_rows >= rows:
                yield carry.slice(0, rows)
                carry = carry.slice(rows)


def _reduce_metrics(metrics: dict[str, Any], objectives: list[str], ntok: float) -> tuple[dict[str, float], float]:
    """Mean of each objective's loss and raw grad norm over the ranks that had it (ranks
    differ in which objectives their rows feed), and the summed token count."""
    keys = [f"{p}/{n}" for n in objectives for p in ("loss", "gradnorm_raw")]
    vals = []
    for k in keys:
        vals += [metrics.get(k, 0.0), 1.0 if k in metrics else 0.0]
    t = torch.tensor(vals + [ntok], dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    pairs = t[:-1].view(-1, 2).tolist()
    return {k: s / c for k, (s, c) in zip(keys, pairs, strict=True) if c > 0}, float(t[-1])


def _broadcast(obj: Any) -> Any:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _resume_dir(ray_ckpt: Any, registry: Any, run_dir: Path) -> Path | None:
    """The newest durable checkpoint: Ray's latest, or the lineage head's if newer.

    After a worker failure Ray Train may restart the group before its controller has
    registered the last reported checkpoint (seen on a loaded 2-core machine: the
    restarted run began again at step 0). The lineage head is appended only after the
    checkpoint was persisted, so it is a durable lower bound. Rank 0 decides; all follow.
    """
    import ray

    choice = None
    if registry is not None:
        candidates = []
        if ray_ckpt is not None:
            candidates.append(Path(ray_ckpt.path))
        head = ray.get(registry.head_record.remote())
        if head is not None:
            candidates.append(run_dir / head["checkpoint"])
        steps = [(json.loads((c / "train_state.json").read_text())["step"], str(c))
                 for c in candidates if (c / "train_state.json").is_file()]  # fmt: skip
        choice = max(steps)[1] if steps else None
    choice = _broadcast(choice)
    return Path(choice) if choice else None


def train_func(config: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.train

    job = job_from_dict(config["job"])
    mcfg, data = job.model, job.data
    # The driver may re-plan the worker count (elastic relaunch) keeping the global batch.
    data = replace(data, batch_size=int(config.get("batch_size", data.batch_size)))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    placement = resolve(job.device, ctx.get_local_rank())
    if job.workers.threads:
        torch.set_num_threads(job.workers.threads)
    run_dir = Path(config["run_dir"])
    # Who is running where (diagnostics; fault-injection tests read the pids from here).
    (run_dir / "workers").mkdir(parents=True, exist_ok=True)
    (run_dir / "workers" / f"rank{rank}.json").write_text(json.dumps({"pid": os.getpid(), "world": world}))
    plan = config.get("parallel") or {"dp": world, "tp": 1, "pp": 1, "microbatches": 1}
    dims = par.ParallelDims.from_plan(plan)
    dims.validate(world)

    torch.manual_seed(job.loop.seed)  # identical initial weights on every rank
    model = build(mcfg).to(placement.device)
    world_target = loop.make_world_target(model)  # from the full model, before any split
    flops_per_token = model.flops_per_token()  # here: a pipeline stage lacks parts
    layout = build_stepper(model, dims, mcfg, placement.device, n_microbatches=int(plan.get("microbatches") or dims.pp),
                           compile=job.device.compile)  # fmt: skip
    mesh, model, stepper, step_fn, eval_fn = layout.mesh, layout.module, layout.target, layout.step, layout.evaluate
    dp_rank, dp = par.dp_rank_and_size(mesh)  # data is sharded by dp rank, not world rank
    if layout.n_microbatches:
        data = replace(data, accum_steps=layout.n_microbatches)  # one micro entry per schedule micro-batch
    # Tokens are counted once per dp replica (tp and pp ranks see the same rows).
    counts_tokens = mesh is None or (axis_rank(mesh, "tp") == 0 and axis_rank(mesh, "pp") == 0)
    opt, sched = build_optimizer(model, job.optim, job.loop.steps)
    objectives = mcfg.objectives

    tuner = ray.get_actor(config["tuner"]) if config.get("tuner") else None
    registry = ray.get_actor(config["registry"]) if rank == 0 else None
    phases = [Phase(**{k: v for k, v in p.items() if k != "heldout"}) for p in config["phases"]]
    lambdas = {n: 1.0 for n in objectives}
    # cursor: rows consumed from the current phase's corpus; rows: from all phases.
    start_step, cursor, rows, tokens_seen, phase_idx = 0, 0, 0, 0, 0
    phase_tokens: dict[str, int] = {}
    resume_dir = _resume_dir(ray.train.get_checkpoint(), registry, run_dir)
    if resume_dir is not None:
        state = ckpt.load(resume_dir, model, opt, sched)
        marker = json.loads((resume_dir / "lineage.json").read_text())
        if world_target is not None and (resume_dir / "world_target.pt").is_file():
            world_target.load_state_dict(torch.load(resume_dir / "world_target.pt"))
        start_step, cursor, tokens_seen = state["step"], state["cursor"], state["tokens_seen"]
        rows, phase_idx = state.get("rows", cursor), state.get("phase", 0)
        phase_tokens = state.get("phase_tokens", {})
        lambdas = state.get("lambdas", lambdas)
        ckpt.set_rng_state(state["rng"])
        if rank == 0:
            if tuner is not None and state.get("tuner"):
                ray.get(tuner.load_state_dict.remote(state["tuner"]))
            # A crash between report and append: finish the append (idempotent).
            ray.get(registry.append.remote({k: v for k, v in marker["record"].items() if k != "schema"}))

    heldout_by_phase: dict[int, dict[str, Any]] = {}

    def heldout(ph: Phase) -> dict[str, Any]:  # the phase corpus' held-out rows, collated once
        if ph.index not in heldout_by_phase:
            heldout_by_phase[ph.index] = {
                src: collate(r, mcfg, seeded_generator(job.loop.seed, -1, 0))
                for src, r in read_heldout(config["phases"][ph.index]["heldout"], data.eval_rows_per_source).items()
            }  # fmt: skip
        return heldout_by_phase[ph.index]

    g_rows = dp * data.batch_size  # one global micro-batch
    ph = phase_at(phases, start_step)
    if ph.index != phase_idx:  # resumed exactly at a phase boundary: the new corpus starts at 0
        cursor = 0
    stream = global_row_stream(ray.train.get_dataset_shard(dataset_key(ph.index)), g_rows, cursor)
    peak = peak_flops(placement)  # per device: a table entry, else a matmul probe
    history: list[dict[str, Any]] = []
    segment: list[dict[str, Any]] = []  # per-step inputs since the last checkpoint (replay)
    pending = None
    last_record = ""
    gns = GradientNoiseScale()
    accum = data.accum_steps
    if resume_dir is not None:
        accum = state.get("accum", accum)
        if state.get("gns"):
            gns.load_state_dict(state["gns"])
    t_last = time.perf_counter()

    for step in range(start_step, job.loop.steps):
        if (nxt := phase_at(phases, step)).index != ph.index:  # next phase: its corpus from row 0
            ph, cursor = nxt, 0
            stream = global_row_stream(ray.train.get_dataset_shard(dataset_key(ph.index)), g_rows, cursor)
        if step == ph.start:  # the tuner (or the fixed λ) starts from the phase's weights
            if rank == 0:
                if tuner is not None:
                    pending = None  # a λ fetched before the switch would undo it
                    lambdas = ray.get(tuner.set_phase.remote(ph.lambdas, ph.index))
                else:
                    lambdas = normalise(ph.lambdas or {}, objectives)
            lambdas = _broadcast(lambdas)
        gen = seeded_generator(job.loop.seed, step, dp_rank)
        t_wait = time.perf_counter()  # data wait: stream + decode + collate
        micro = []
        for j in range(accum):
            table = next(stream)
            mine = table.slice(dp_rank * data.batch_size, data.batch_size).to_pydict()
            # The cursor is only meaningful if the stream follows the corpus order exactly.
            first = (cursor + j * g_rows + dp_rank * data.batch_size) % ph.total_rows
            if mine["position"][0] != first:
                raise RuntimeError(f"data stream out of order: row {mine['position'][0]}, expected {first}")
            micro.append(collate(mine, mcfg, gen))
        t_wait = time.perf_counter() - t_wait
        accum_used = accum
        segment.append({"step": step, "cursor": cursor, "phase": ph.index, "lambdas": dict(lambdas), "accum": accum})
        metrics = step_fn(stepper, opt, sched, micro, cfg=mcfg, placement=placement,
                                  grad_clip=job.optim.grad_clip, lambdas=lambdas,
                                  world_target=world_target)  # fmt: skip
        cursor += accum * g_rows
        rows += accum * g_rows
        ntok = float(sum(int(m["n_tokens"]) for m in micro)) if counts_tokens else 0.0
        row, total_tok = _reduce_metrics(metrics, objectives, ntok)
        batch_tokens = int(round(total_tok))
        tokens_seen += batch_tokens
        phase_tokens[ph.name] = phase_tokens.get(ph.name, 0) + batch_tokens
        now = time.perf_counter()
        dt, t_last = max(now - t_last, 1e-9), now
        row.update(step=step, lr=metrics["lr"], grad_norm=metrics["grad_norm"], batch_tokens=batch_tokens,
                   tokens_seen=tokens_seen, tokens_per_s=batch_tokens / dt, cursor=cursor,
                   accum_steps=accum, phase=ph.index)  # fmt: skip
        # Gradient noise scale: one global micro-batch (small) vs the whole step (big).
        b_noise = None
        if metrics["gns_small_sq"] is not None and batch_tokens > 0:
            b_noise = gns.update(metrics["gns_small_sq"], metrics["gns_big_sq"], batch_tokens / accum, batch_tokens)
        row["critical_batch_tokens"] = b_noise
        if data.target_batch_tokens and dims.pp == 1:
            want = cap_batch(float(data.target_batch_tokens), b_noise)
            ideal = round(want / max(batch_tokens / accum, 1.0))
            # One micro-batch more or less per step; at least 2 keeps the estimate alive.
            accum = max(min(2, data.max_accum_steps), min(data.max_accum_steps, accum + (ideal > accum) - (ideal < accum)))
        row["target_batch_tokens"] = data.target_batch_tokens or None
        # Every layout slot is computed, so model FLOPs count rows × slots, not text tokens.
        slots = accum_used * g_rows * mcfg.layout.seq_len
        row["mfu"] = slots / dt * flops_per_token / (peak * world)
        row["peak_flops"] = peak
        row["data_wait_fraction"] = t_wait / dt
        for n in objectives:
            row[f"lambda/{n}"] = lambdas.get(n, 1.0)
        if rank == 0 and tuner is not None:
            raw = {n: row[f"gradnorm_raw/{n}"] for n in objectives if f"gradnorm_raw/{n}" in row}
            tuner.report.remote(step, raw)
            if pending is None:
                pending = tuner.metrics.remote()
            elif ray.wait([pending], timeout=0)[0]:  # never block the step on the actor
                tm = ray.get(pending)
                pending = None
                lambdas = {n: tm.get(f"tuner/lambda/{n}", lambdas.get(n, 1.0)) for n in objectives}
                for n in objectives:
                    if f"tuner/gnorm/{n}" in tm:
                        row[f"gradnorm/{n}"] = lambdas[n] * tm[f"tuner/gnorm/{n}"]
                row["tuner/imbalance"] = tm.get("tuner/imbalance")
        lambdas, accum = _broadcast((lambdas, accum))  # identical λ and batch on every rank
        history.append(row)
        if rank == 0:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        done = step + 1
        # A checkpoint (and lineage record) also closes every phase.
        if done % job.loop.checkpoint_every == 0 or done == job.loop.steps or done == ph.end:
            scores = eval_fn(stepper, heldout(ph), mcfg, placement, world_target)
            tuner_state = ray.get(tuner.state_dict.remote()) if (rank == 0 and tuner is not None) else None
            state = {"step": done, "cursor": cursor, "rows": rows, "phase": ph.index, "phase_tokens": phase_tokens,
                     "tokens_seen": tokens_seen, "lambdas": lambdas,
                     "rng": ckpt.rng_state(), "tuner": tuner_state, "accum": accum,
                     "gns": gns.state_dict(), "world_size": world, "batch_size": data.batch_size,
                     "parallel": {"dp": dims.dp, "tp": dims.tp, "pp": dims.pp},
                     "threads": torch.get_num_threads()}  # fmt: skip
            tmp = Path(tempfile.mkdtemp(prefix=f"ogi-ckpt-{done}-"))
            root = ckpt.save(tmp, model, opt, sched, state, rank, mesh)
            name = f"step_{done:06d}"
            fields: dict[str, Any] = {}
            if rank == 0:
                if world_target is not None:
                    torch.save(world_target.state_dict(), tmp / "world_target.pt")
                (tmp / "segment.json").write_text(json.dumps(segment))
                fields = {
                    "run": config["run_name"], "step": done, "parent": ray.get(registry.get_head.remote()),
                    "checkpoint": name, "weights_root": root, "weights_hash": "sha256-merkle-v1",
                    "weights_file": ckpt.WEIGHTS_FILE, "manifest_hash": ph.manifest_hash,
                    "config_hash": config["config_hash"], "rng": ckpt.rng_commitment(), "eval": scores,
                    "data_cursor": {"rows": rows, "tokens_seen": tokens_seen, "phase": ph.index},
                    # Every other file of the checkpoint (optimizer, train state, segment):
                    # written above, so tampering with any of them breaks the record.
                    "files": checkpoint_files(tmp),
                }  # fmt: skip
                rec = make_record(**fields)
                (tmp / "lineage.json").write_bytes(canonical_json({"record_hash": record_hash(rec), "record": rec}))
            report_ckpt = ray.train.Checkpoint.from_directory(str(tmp)) if rank == 0 else None
            ray.train.report({**row, **scores}, checkpoint=report_ckpt, checkpoint_dir_name=name)
            if rank == 0:
                last_record = ray.get(registry.append.remote(fields))
            shutil.rmtree(tmp, ignore_errors=True)
            segment = []
        elif done % job.loop.log_every == 0:
            ray.train.report(row)

    def first_last(key: str) -> tuple[float | None, float | None]:
        vals = [h[key] for h in history if key in h]
        return (vals[0], vals[-1]) if vals else (None, None)

    losses = {n: first_last(f"loss/{n}") for n in objectives}
    return {
        "steps": job.loop.steps, "start_step": start_step, "tokens_seen": tokens_seen,
        "loss_first": losses["lm"][0], "loss_last": losses["lm"][1], "losses": losses,
        "final_record": last_record, "objectives": objectives,
        "phases": [{"name": p.name, "start": p.start, "steps": p.steps, "token_budget": p.token_budget,
                    "tokens": phase_tokens.get(p.name, 0)} for p in phases],
    }  # fmt: skip
