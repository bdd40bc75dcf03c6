"""Bare PyTorch training loop on a built corpus: the baseline for the full stack, and the
GPU smoke test (the same code on CUDA + bf16 by configuration alone).

    python benchmarks/bare_loop.py --corpus DIR [--preset small] [--steps 30] [--device auto]
        [--precision auto] [--batch 16] [--seq 128] [--nproc 1]

One process, no Ray, no torch.distributed: rows are read from the Parquet shards with
pyarrow in corpus order, collated exactly as the Ray worker does (ogi_ray.train.data),
and stepped with ogi_ray.train.step.PlainStep (the worker's step object). Prints one JSON line per phase with
tokens/s, MFU against the device's peak (table entry, else a matmul probe), the loss of
each objective first → last, and the Merkle root of the final weights; with --profile N,
N more steps run under torch.profiler and ``time_breakdown`` gives the fraction of step
time in matmuls, attention, elementwise ops, the optimizer, data and the rest.

With ``--nproc W`` (W > 1) it is the torchrun-style baseline of a W-worker job: W
processes on one gloo group (``cpu:gloo,cuda:nccl`` on GPUs), each with 1/W of the
threads, the model sharded by the trainer's own ``build_stepper`` for dp = W (FSDP2), each
rank reading its own ``--batch`` rows per step; no Ray, no metric reductions, no tuner
(λ stay at their initial values), no lineage, no checkpoints. It prints step seconds and
tokens only: the stack's per-rank overhead is its step against this one.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ogi_ray.corpus.manifest import load_manifest, shard_paths
from ogi_ray.lineage.merkle import weights_root
from ogi_ray.model import build
from ogi_ray.parallel.apply import compile_blocks
from ogi_ray.parallel.device import (
    DeviceConfig,
    Placement,
    attention_kernel,
    linear_gemm_shapes,
    peak_flops,
    resolve,
)
from ogi_ray.train.breakdown import time_breakdown
from ogi_ray.train.config import job_from_dict
from ogi_ray.train.data import COLUMNS, collate, seeded_generator
from ogi_ray.train.launch import fit_model_to_corpus
from ogi_ray.train.optim import build_optimizer
from ogi_ray.train.schedule import lr_at, warmup_steps
from ogi_ray.train.step import PlainStep, make_world_target
from ogi_ray.train.tuner import LossWeightTuner, TunerConfig, imbalance


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--tuner", choices=["on", "off"], default="on",
                    help="the loss-weight tuner, in process (same math as the actor)")
    ap.add_argument("--warmup", type=int, default=20, help="tuner warm-up updates")
    ap.add_argument("--max-step", type=float, default=TunerConfig.max_step, help="tuner: max λ change factor per update")
    ap.add_argument("--dual-lr", type=float, default=TunerConfig.dual_lr, help="tuner: dual ascent step")
    ap.add_argument("--ema", type=float, default=TunerConfig.ema, help="tuner: smoothing of the norms")
    ap.add_argument("--compile", action="store_true", help="torch.compile each transformer block")
    ap.add_argument("--norms-out", default="", help="write each step's raw per-objective grad norms (JSON lines)")
    ap.add_argument("--profile", type=int, default=0,
                    help="after the timed steps, profile this many more and print where the time goes")
    ap.add_argument("--nproc", type=int, default=1,
                    help="W > 1: W processes on one gloo/NCCL group, FSDP2 over dp = W, --batch rows each")
    args = ap.parse_args()
    if args.nproc > 1:
        run_distributed(args)
        return

    job, placement, table = load_job(args)
    model = build(job.model, seed=0).to(placement.device)
    model.attention_kernel = attention_kernel(placement.device)  # as the trainer's stepper sets it
    world_target = make_world_target(job.model, 0, placement.device)
    if args.compile:
        compile_blocks(model)
    step_fn = PlainStep(model, job.model, placement, grad_clip=1.0)
    opt, sched = build_optimizer(model, job.optim, job.loop.steps)
    # One peak for the run, before the loop: the best of square probes and the model's GEMMs.
    peak = peak_flops(placement, linear_gemm_shapes(model, args.batch * job.model.layout.seq_len))
    batch_at = batch_source(table, job, args.batch)

    tuner = LossWeightTuner(TunerConfig(objectives=job.model.objectives, warmup=args.warmup,
                                        max_step=args.max_step, dual_lr=args.dual_lr, ema=args.ema,
                                        enabled=args.tuner == "on"))  # fmt: skip
    lambdas = tuner.weights()
    t_data = 0.0
    history: list[dict[str, float]] = []
    lrs: list[float] = []
    ratios: list[float] = []
    tokens = 0
    norms_out = open(args.norms_out, "w") if args.norms_out else None  # noqa: SIM115 - closed below
    t0 = time.perf_counter()
    for step in range(args.steps):
        td = time.perf_counter()
        batch = batch_at(step)
        t_data += time.perf_counter() - td
        m = step_fn.train(opt, sched, [batch], lambdas=lambdas, world_target=world_target)
        tokens += int(batch["n_tokens"])
        history.append({k: v for k, v in m.items() if k.startswith("loss/")})
        lrs.append(m["lr"])
        raw = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("gradnorm_raw/")}
        tuner.report(step, raw)
        if norms_out is not None:
            norms_out.write(json.dumps({"step": step, **raw}) + "\n")
        lambdas = tuner.weights()
        if step >= args.warmup:
            ratios.append(imbalance(tuner.state))
        if step == 1:  # exclude warm-up (allocator, kernels) from the timing
            if placement.device.type == "cuda":
                torch.cuda.synchronize()
            t0, tokens, t_data = time.perf_counter(), 0, 0.0
    if placement.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if norms_out is not None:
        norms_out.close()
    # Slot-tokens: every layout slot is computed, so FLOPs count the whole sequence.
    slot_tokens = (args.steps - 2) * args.batch * job.model.layout.seq_len
    root = weights_root({k: v.float().cpu() for k, v in model.state_dict().items()
                         if not k.startswith("rope") and k != "attn_mask"})  # fmt: skip
    breakdown = profile_steps(step_fn, opt, sched, batch_at, args.steps, args.profile, lambdas, world_target,
                              cuda=placement.device.type == "cuda") if args.profile else None  # fmt: skip
    k = max(1, args.steps // 10)

    def mean(rows: list[dict[str, float]], key: str) -> float | None:
        vals = [r[key] for r in rows if key in r]
        return sum(vals) / len(vals) if vals else None

    keys = sorted({key for r in history for key in r})
    w = warmup_steps(args.steps, job.optim.warmup_frac)
    check = [0, w, args.steps // 2, args.steps - 1]
    lr_ok = all(abs(lrs[s] - lr_at(s, total_steps=args.steps, max_lr=job.optim.lr, min_lr=job.optim.min_lr,
                                   warmup_frac=job.optim.warmup_frac)) < 1e-12 for s in check)  # fmt: skip
    print(json.dumps({
        "device": torch.cuda.get_device_name() if placement.device.type == "cuda" else "cpu",
        "torch": torch.__version__, "preset": args.preset, "params": model.num_params(),
        "precision": str(placement.autocast_dtype or "fp32"), "compile": args.compile, "steps": args.steps,
        "text_tokens_per_s": tokens / dt, "slot_tokens_per_s": slot_tokens / dt,
        "step_s": dt / (args.steps - 2), "text_tokens_per_step": tokens / (args.steps - 2),
        "mfu": slot_tokens / dt * model.flops_per_token() / peak, "peak_flops": peak,
        "data_wait_fraction": t_data / dt,
        "tuner": args.tuner, "max_step": args.max_step, "dual_lr": args.dual_lr, "ema": args.ema,
        "loss_first_10pct": {key: mean(history[:k], key) for key in keys},
        "loss_last_10pct": {key: mean(history[-k:], key) for key in keys},
        "balance_le_2_fraction": sum(r <= 2 for r in ratios) / len(ratios) if ratios else None,
        "median_imbalance": sorted(ratios)[len(ratios) // 2] if ratios else None,
        "lr_checked_steps": check, "lr_matches_formula": lr_ok,
        "weights_root": root, "time_breakdown": breakdown,
    }))  # fmt: skip


def load_job(args: argparse.Namespace) -> tuple[Any, Placement, pa.Table]:
    """The job the trainer would run for these arguments, its placement, and the corpus
    rows (all shards, corpus order)."""
    manifest = load_manifest(args.corpus)
    vocab = int(manifest["tokenizers"]["text"]["vocab_size"])
    job = job_from_dict({"model": {"preset": args.preset, "vocab_size": vocab},
                         "data": {"corpus": args.corpus, "batch_size": args.batch, "seq_len": args.seq,
                                  "accum_steps": 1},
                         "loop": {"steps": args.steps}})  # fmt: skip
    job = fit_model_to_corpus(job, manifest)
    placement = resolve(DeviceConfig(device=args.device, precision=args.precision))
    job = replace(job, device=DeviceConfig(device=placement.device.type, precision=args.precision))
    table = pa.concat_tables([pq.read_table(p, columns=COLUMNS) for p in shard_paths(args.corpus)])
    return job, placement, table


def batch_source(table: pa.Table, job: Any, rows: int, rank: int = 0, world: int = 1) -> Callable[[int], dict]:
    """step → this rank's collated batch: ``rows`` consecutive corpus rows, rank r of W
    taking the r-th block of W·rows at each step (wrapping at the end of the corpus)."""

    def batch_at(step: int) -> dict:
        start = ((step * world + rank) * rows) % table.num_rows
        picked = table.take([(start + i) % table.num_rows for i in range(rows)]).to_pydict()
        return collate(picked, job.model, seeded_generator(0, step, rank))

    return batch_at


def run_distributed(args: argparse.Namespace) -> None:
    """``args.nproc`` ranks of ``_rank`` (probe_ranks.run_ranks, 1/nproc of the threads
    each, gloo on CPU, ``cpu:gloo,cuda:nccl`` on GPUs); print rank 0's JSON line."""
    from ogi_ray.parallel.device import process_group_backend
    from ogi_ray.parallel.probe_ranks import run_ranks

    threads = max(1, torch.get_num_threads() // args.nproc)
    gpu = resolve(DeviceConfig(device=args.device, precision=args.precision)).use_gpu
    res = run_ranks(_rank, args.nproc, args, threads=threads, backend=process_group_backend(gpu))
    print(json.dumps({**res, "threads_per_rank": threads}))


def _rank(rank: int, world: int, args: argparse.Namespace) -> dict[str, Any]:
    """One rank of the torchrun-style baseline: the trainer's own build_stepper for dp =
    world, its own rows, fixed λ; time steps 2.. between barriers."""
    import torch.distributed as dist

    from ogi_ray.parallel.plan import ParallelPlan
    from ogi_ray.train.stepper import build_stepper

    job, placement, table = load_job(args)
    if placement.use_gpu:  # one GPU per rank, as Ray Train assigns them (before any collective)
        placement = replace(placement, device=torch.device("cuda", rank))
        torch.cuda.set_device(placement.device)
    plan = ParallelPlan(dp=world, micro_batch_rows=args.batch)
    st = build_stepper(job.model, plan, placement, seed=0, compile=args.compile, grad_clip=1.0)
    opt, sched = build_optimizer(st.module, job.optim, job.loop.steps)
    world_target = make_world_target(job.model, 0, placement.device)
    lambdas = LossWeightTuner(TunerConfig(objectives=job.model.objectives)).weights()
    batch_at = batch_source(table, job, args.batch, rank, world)

    def sync() -> None:
        if placement.use_gpu:
            torch.cuda.synchronize()
        dist.barrier()

    tokens, t0 = 0, 0.0
    for step in range(args.steps):
        batch = batch_at(step)
        st.step.train(opt, sched, [batch], lambdas=lambdas, world_target=world_target)
        tokens += int(batch["n_tokens"])
        if step == 1:  # exclude warm-up, as the one-process loop does
            sync()
            t0, tokens = time.perf_counter(), 0
    sync()
    dt = time.perf_counter() - t0
    total = torch.tensor([float(tokens)], dtype=torch.float64)
    dist.all_reduce(total)  # a host tensor: the gloo half of the group on GPUs too
    return {"preset": args.preset, "nproc": world, "rows_per_rank": args.batch, "steps": args.steps,
            "text_tokens_per_s": float(total) / dt, "step_s": dt / (args.steps - 2),
            "text_tokens_per_step": float(total) / (args.steps - 2)}  # fmt: skip


def profile_steps(step_fn: PlainStep, opt, sched, batch_at, first: int, n: int, lambdas, world_target, *,
                  cuda: bool) -> dict[str, float]:  # fmt: skip
    """Fractions of the step's wall time by category (ogi_ray.train.breakdown) over ``n``
    more steps under torch.profiler; the batch fetch is timed as ``data``."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t_data = 0.0
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for step in range(first, first + n):
            td = time.perf_counter()
            batch = batch_at(step)
            t_data += time.perf_counter() - td
            step_fn.train(opt, sched, [batch], lambdas=lambdas, world_target=world_target)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    shares = time_breakdown(prof.events(), wall - t_data, device=cuda)
    out = {k: v * (wall - t_data) / wall for k, v in shares.items()}
    out["data"] = t_data / wall
    return out


if __name__ == "__main__":
    main()
