"""Sharded checkpoints: the training stall they cause, and each rank's peak memory while
saving and loading, against the model's size.

    python benchmarks/checkpoint_io.py [--stall-preset small] [--memory-preset base]
        [--worlds 1 2 4] [--steps 6] [--every 10]

1. Stall (``--stall-preset``, dp = 2 gloo ranks, in-process, no Ray): the median step
   time of the real step object on batches of the model's layout, then what the worker
   does at a checkpoint: checkpoint.save (each rank its weight and optimizer shards,
   hashed as written; the weights root without gathering) + the record and its marker.
   Printed: stall per checkpoint, as a fraction of run time at ``--every`` steps per
   checkpoint, and the interval at which it is 5 %; and the same for the background
   variant (checkpoint.save_async: staged, written during the next step).
2. Memory (``--memory-preset``, dp = each of ``--worlds``): each rank's peak resident
   memory above its level just before save and before load (sampled every 2 ms), against
   its own shard of weights + optimizer state and the model's largest tensor (the goal:
   peak ≤ own shard + largest tensor), and against the whole model state.

Every figure is measured in this run; sizes come from the built model, not from a table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident set size while the block runs, sampled every 2 ms."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())

    @property
    def delta(self) -> int:
        return self.peak - self.base


def _cfg(preset: str):
    from ogi_ray.model import preset as make

    # The demo corpus' layout (images, video, embodied steps), at this preset's width.
    c = make(preset, vocab_size=4096, n_text=128, n_img=16, img_dim=192, n_vid=32, vid_group=16,
             vid_dim=384, n_steps=16, prop_dim=16, act_dim=16)  # fmt: skip
    return replace(c)


def _batch(cfg, rows: int, seed: int) -> dict[str, torch.Tensor]:
    """A batch of the layout's tensors, every slot present (the step's cost depends on the
    shapes only; the checkpoint's on the model)."""
    g = torch.Generator().manual_seed(seed)
    lay, b = cfg.layout, rows
    act, noise, t = (torch.randn(b, lay.n_steps, cfg.act_dim, generator=g),
                     torch.randn(b, lay.n_steps, cfg.act_dim, generator=g), torch.rand(b, generator=g))  # fmt: skip
    ones = lambda *s: torch.ones(*s, dtype=torch.bool)  # noqa: E731
    return {
        "tokens": torch.randint(1, cfg.vocab_size, (b, lay.n_text), generator=g), "text_valid": ones(b, lay.n_text),
        "n_tokens": torch.tensor(b * lay.n_text), "img": torch.rand(b, lay.n_img, cfg.img_dim, generator=g),
        "img2": torch.rand(b, lay.n_img, cfg.img_dim, generator=g), "img_present": ones(b, lay.n_img),
        "mae_mask": torch.rand(b, lay.n_img, generator=g) < 0.75,
        "vid": torch.rand(b, lay.n_vid, cfg.vid_dim, generator=g), "vid_present": ones(b, lay.n_vid),
        "prop": torch.rand(b, lay.n_steps, cfg.prop_dim, generator=g), "act": act,
        "act_dims": ones(b, cfg.act_dim), "step_present": ones(b, lay.n_steps), "flow_t": t,
        "act_xt": t[:, None, None] * act + (1 - t[:, None, None]) * noise, "act_v": act - noise,
    }  # fmt: skip


def _rank(rank: int, world: int, port: int, args: dict, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from ogi_ray.lineage.record import make_record
    from ogi_ray.parallel.device import DeviceConfig, resolve
    from ogi_ray.parallel.plan import ParallelPlan
    from ogi_ray.storage import Store
    from ogi_ray.train import checkpoint as ckpt
    from ogi_ray.train.optim import OptimConfig, build_optimizer
    from ogi_ray.train.step import make_world_target
    from ogi_ray.train.stepper import build_stepper

    cfg = _cfg(args["preset"])
    placement = resolve(DeviceConfig(device="cpu", precision="fp32"))
    st = build_stepper(cfg, ParallelPlan(dp=world, micro_batch_rows=args["rows"]), placement, seed=0, compile=False, grad_clip=1.0)
    opt, sched = build_optimizer(st.module, OptimConfig(), 1000)
    wt = make_world_target(cfg, 0, placement.device)
    lambdas = {n: 1.0 for n in cfg.objectives}
    times = []
    for step in range(args["steps"]):
        micro = [_batch(cfg, args["rows"], 1000 * step + rank)]
        t0 = time.perf_counter()
        st.step.train(opt, sched, micro, lambdas=lambdas, world_target=wt)
        times.append(time.perf_counter() - t0)
    local = [p.to_local() if hasattr(p, "to_local") else p for p in st.module.parameters()]
    # weights + 2 AdamW moments, all fp32: this rank's share of the model state
    res = {"step_s": statistics.median(times[1:]), "own_shard_bytes": 3 * sum(t.numel() * 4 for t in local)}
    tmp = args["ckpt_dir"]  # one folder for every rank's shards
    dist.barrier()
    t0 = time.perf_counter()
    with PeakRSS() as save_mem:
        saved = ckpt.save(Store(tmp), st.module, opt, sched, train_state={"step": 1}, world_target=wt)
        if rank == 0:
            rec = make_record(run="bench", step=1, parent="", checkpoint="step_000001",
                              weights_root=saved.root, weights_hash="sha256-merkle-v1", weights_file="model",
                              weights_format=ckpt.WEIGHTS_FORMAT, manifest_hash="0" * 64, config_hash="0" * 64,
                              rng=ckpt.rng_commitment(0), eval={}, data_cursor={"rows": 1}, files=saved.files)  # fmt: skip
            Store(tmp).write_atomic("lineage.json", json.dumps(rec).encode())
        dist.barrier()
    res["save_s"] = time.perf_counter() - t0
    res["save_peak_bytes"] = save_mem.delta
    # The background variant: staging + root now, the shards written during the next
    # step; its cost is the staging, the slower overlapped step, and any wait after it.
    with tempfile.TemporaryDirectory() as tmp2:
        dist.barrier()
        t0 = time.perf_counter()
        pending = ckpt.save_async(Store(tmp2), st.module, opt, sched, train_state={"step": 1}, world_target=wt)
        res["async_stage_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        st.step.train(opt, sched, [_batch(cfg, args["rows"], 99 + rank)], lambdas=lambdas, world_target=wt)
        res["async_overlapped_step_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pending.result()
        dist.barrier()
        res["async_wait_s"] = time.perf_counter() - t0
    st2 = build_stepper(cfg, ParallelPlan(dp=world, micro_batch_rows=args["rows"]), placement, seed=None,
                        compile=False, grad_clip=1.0)  # fmt: skip
    opt2, sched2 = build_optimizer(st2.module, OptimConfig(), 1000)
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    get_optimizer_state_dict(st2.module, opt2)  # the optimizer's state exists before the load
    dist.barrier()
    t0 = time.perf_counter()
    with PeakRSS() as load_mem:
        ckpt.load(Store(tmp), st2.module, opt2, sched2, make_world_target(cfg, 0, placement.device))
        dist.barrier()
    res["load_s"] = time.perf_counter() - t0
    res["load_peak_bytes"] = load_mem.delta
    Path(out, f"rank{rank}.json").write_text(json.dumps(res))
    dist.destroy_process_group()
    os._exit(0)


def _run(preset: str, world: int, steps: int, rows: int) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as ck:
        spec = {"preset": preset, "steps": steps, "rows": rows, "ckpt_dir": ck}
        mp.start_processes(_rank, args=(world, port, spec, out), nprocs=world, join=True, start_method="spawn")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def _sizes(preset: str) -> tuple[int, int]:
    """(whole model state: weights + 2 AdamW moments, largest tensor) in bytes."""
    from ogi_ray.model import build

    with torch.device("meta"):
        m = build(_cfg(preset))
    return 3 * sum(p.numel() * 4 for p in m.parameters()), max(p.numel() * 4 for p in m.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stall-preset", default="small")
    ap.add_argument("--memory-preset", default="base")
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rows", type=int, default=16, help="rows per rank per step (small.yaml: 8 × 2 micro-batches)")
    ap.add_argument("--every", type=int, default=100, help="steps per checkpoint (jobs/configs/small.yaml: 100)")
    args = ap.parse_args()

    ranks = _run(args.stall_preset, 2, args.steps, args.rows)
    step = max(r["step_s"] for r in ranks)
    stall = max(r["save_s"] for r in ranks)
    stall_async = max(r["async_stage_s"] + r["async_wait_s"] + r["async_overlapped_step_s"] - r["step_s"]
                      for r in ranks)  # fmt: skip
    print(json.dumps({"stall": {
        "preset": args.stall_preset, "dp": 2, "rows_per_step": args.rows, "step_s": round(step, 4),
        "checkpoint_s": round(stall, 4), "steps_per_checkpoint_cost": round(stall / step, 2),
        f"fraction_at_every_{args.every}": round(stall / (stall + args.every * step), 4),
        "every_for_5_percent": int(stall / step * 19) + 1,
        "async_checkpoint_s": round(stall_async, 4), "async_over_sync": round(stall_async / stall, 2),
        "async_overlapped_step_over_step": round(max(r["async_overlapped_step_s"] for r in ranks) / step, 2),
        "load_s": round(max(r["load_s"] for r in ranks), 4),
    }}))  # fmt: skip
    total, largest = _sizes(args.memory_preset)
    for world in args.worlds:
        ranks = _run(args.memory_preset, world, 2, 2)
        for i, r in enumerate(ranks):
            # The rank holds its shard anyway; save and load may add at most one tensor.
            own, bound = r["own_shard_bytes"], r["own_shard_bytes"] + largest
            print(json.dumps({"memory": {
                "preset": args.memory_preset, "dp": world, "rank": i, "model_state_mb": round(total / 1e6, 1),
                "own_shard_mb": round(own / 1e6, 1), "largest_tensor_mb": round(largest / 1e6, 1),
                "save_extra_mb": round(r["save_peak_bytes"] / 1e6, 1), "load_extra_mb": round(r["load_peak_bytes"] / 1e6, 1),
                "save_peak_over_bound": round((own + r["save_peak_bytes"]) / bound, 3),
                "load_peak_over_bound": round((own + r["load_peak_bytes"]) / bound, 3),
                "save_peak_over_model_state": round((own + r["save_peak_bytes"]) / total, 3),
                "save_s": round(r["save_s"], 3), "load_s": round(r["load_s"], 3),
            }}))  # fmt: skip


if __name__ == "__main__":
    main()
