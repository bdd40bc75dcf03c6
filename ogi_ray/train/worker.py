"""The Ray boundary of training: ``train_func(config)`` runs once per Ray Train worker.

    config dict ─► JobConfig ─► placement (device/backend) ─► plain model
      ─► parallel.apply(model, mesh) ─► AdamW + schedule ─► resume from Ray's checkpoint
      ─► loop.run(batches from ray.train.get_dataset_shard("train"))
           each step: metrics (all-reduced) ─► metrics.jsonl (rank 0)
           each checkpoint: eval on held-out rows ─► checkpoint.save ─► lineage marker
                            ─► ray.train.report(checkpoint) ─► LineageRegistry.append

Only this module touches ``ray.train``; the loop itself is plain PyTorch.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ogi_ray.lineage.record import make_record, record_hash
from ogi_ray.model import build
from ogi_ray.parallel import apply as par
from ogi_ray.parallel.device import resolve
from ogi_ray.train import checkpoint as ckpt
from ogi_ray.train import loop
from ogi_ray.train.config import DataConfig, job_from_dict
from ogi_ray.train.data import collate, read_heldout
from ogi_ray.train.optim import build_optimizer


def _batches(shard: Any, data: DataConfig, n_patches: int, patch_dim: int, skip: int) -> Iterator[dict]:
    """Endless stream of collated batches over epochs, skipping ``skip`` already-seen ones."""
    seen = 0
    while True:
        for b in shard.iter_batches(batch_size=data.batch_size, batch_format="numpy", drop_last=True):
            seen += 1
            if seen > skip:
                yield collate(b, data.seq_len, n_patches, patch_dim)


def _all_mean(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.tolist()


def train_func(config: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.train

    job = job_from_dict(config["job"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    placement = resolve(job.device, ctx.get_local_rank())
    run_dir = Path(config["run_dir"])
    n_patches, patch_dim = job.model.image_patches, job.model.image_patch_dim

    torch.manual_seed(job.loop.seed)  # identical initial weights on every rank
    model = build(job.model).to(placement.device)
    model = par.apply(model, par.build_mesh(placement.device.type, world))
    opt, sched = build_optimizer(model, job.optim, job.loop.steps)

    start_step, batches_seen, tokens_seen = 0, 0, 0
    resumed = ray.train.get_checkpoint()
    registry = ray.get_actor(config["registry"]) if rank == 0 else None
    if resumed is not None:
        with resumed.as_directory() as d:
            state = ckpt.load(Path(d), model, opt, sched)
            marker = json.loads((Path(d) / "lineage.json").read_text())
        start_step, batches_seen, tokens_seen = state["step"], state["batches_seen"], state["tokens_seen"]
        if registry is not None:  # a crash between report and append: finish the append
            ray.get(registry.append.remote({k: v for k, v in marker["record"].items() if k != "schema"}))

    heldout = {
        src: collate(rows, job.data.seq_len, n_patches, patch_dim)
        for src, rows in read_heldout(config["heldout"], job.data.eval_rows_per_source).items()
    }
    shard = ray.train.get_dataset_shard("train")
    batches = _batches(shard, job.data, n_patches, patch_dim, batches_seen // max(world, 1))
    history: list[dict[str, float]] = []
    t_last = time.perf_counter()
    last_record = ""

    def on_step(step: int, metrics: dict[str, float], batch: dict[str, torch.Tensor]) -> None:
        nonlocal tokens_seen, batches_seen, t_last, last_record
        loss, ntok = _all_mean([metrics["loss/lm"], float(batch["n_tokens"])])
        ntok_global = int(round(ntok * world))
        tokens_seen += ntok_global
        batches_seen += world
        now = time.perf_counter()
        row = {**metrics, "loss/lm": loss, "step": step, "batch_tokens": ntok_global,
               "tokens_seen": tokens_seen, "tokens_per_s": ntok_global / max(now - t_last, 1e-9)}  # fmt: skip
        t_last = now
        history.append(row)
        if rank == 0:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        done = step + 1
        if done % job.loop.checkpoint_every == 0 or done == job.loop.steps:
            last_record = _checkpoint(done, row)
        elif done % job.loop.log_every == 0:
            ray.train.report(row)

    def _checkpoint(done: int, row: dict[str, float]) -> str:
        scores = loop.evaluate(model, heldout, placement)
        state = {"step": done, "batches_seen": batches_seen, "tokens_seen": tokens_seen, "rng": ckpt.rng_state()}
        tmp = Path(tempfile.mkdtemp(prefix=f"ogi-ckpt-{done}-"))
        root = ckpt.save(tmp, model, opt, sched, state, rank)
        name = f"step_{done:06d}"
        h = ""
        if rank == 0:
            fields = {
                "run": config["run_name"], "step": done, "parent": ray.get(registry.get_head.remote()),
                "checkpoint": name, "weights_root": root, "weights_hash": "sha256-merkle-v1",
                "weights_file": ckpt.WEIGHTS_FILE, "manifest_hash": config["manifest_hash"],
                "config_hash": config["config_hash"], "rng": ckpt.rng_commitment(), "eval": scores,
                "data_cursor": {"batches_seen": batches_seen, "tokens_seen": tokens_seen},
            }  # fmt: skip
            rec = make_record(**fields)
            h = record_hash(rec)
            (tmp / "lineage.json").write_text(json.dumps({"record_hash": h, "record": rec}, indent=1))
        report_ckpt = ray.train.Checkpoint.from_directory(str(tmp)) if rank == 0 else None
        ray.train.report({**row, **scores}, checkpoint=report_ckpt, checkpoint_dir_name=name)
        if rank == 0:
            got = ray.get(registry.append.remote(fields))
            assert got == h, f"registry stored {got}, expected {h}"
        shutil.rmtree(tmp, ignore_errors=True)
        return h

    loop.run(model, opt, sched, batches, placement=placement, grad_clip=job.optim.grad_clip,
             start_step=start_step, total_steps=job.loop.steps, on_step=on_step)  # fmt: skip
    losses = [h["loss/lm"] for h in history]
    return {
        "steps": job.loop.steps, "start_step": start_step, "tokens_seen": tokens_seen,
        "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
        "final_record": last_record,
    }  # fmt: skip
