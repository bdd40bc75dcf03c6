"""Full `ogi train` stack against a bare PyTorch loop on the same model and batches.

    python benchmarks/train_stack.py --corpus DIR [--preset small] [--steps 30]
        [--batch 8] [--seq 128] [--precision auto] [--workers 1] [--compile]
        [--checkpoint-every N] [--evals [--eval-priority idle|normal]] [--profile 3]

Runs, in one invocation: (1) benchmarks/bare_loop.py in a subprocess (one process, no
Ray), (2) the same job through ogi_ray.train.driver.train on a local Ray cluster
(Ray Train, per-rank shard reads with prefetch, the tuner actor, lineage registry and a
sharded checkpoint at the end, or every N steps with --checkpoint-every; with --evals the
quick eval suite on each checkpoint, on the eval actor, while training goes on). Prints
the median text tokens/s of each and their ratio, the stack's median data-wait fraction
of step time and its median MFU, each run's one peak FLOP/s (the best of square and
model-GEMM probes), and with --profile N the bare loop's breakdown of step time by
category. With --workers 1 both see exactly the same rows and per-step randomness; with
W workers the bare loop takes W × batch rows per step on all the threads, the stack
batch rows per worker on 1/W of them each, and a third run, ``bare_loop.py --nproc W``
(W gloo ranks, FSDP2 by the trainer's own build_stepper, no Ray), is the torchrun-style
baseline at the same decomposition: ``stack_over_bare_dist`` is what the stack adds.
Ratios are given twice: of the median step (``stack_over_*``) and of the mean over all
timed steps (``stack_mean_over_*``), which also counts checkpoints and eval dispatches.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="torch.compile each block, in both")
    ap.add_argument("--checkpoint-every", type=int, default=0, help="stack: checkpoint every N steps (0: at the end)")
    ap.add_argument("--evals", action="store_true", help="stack: the quick eval suite on every checkpoint")
    ap.add_argument("--eval-priority", default="idle", choices=["idle", "normal"], help="stack: evals.priority")
    ap.add_argument("--profile", type=int, default=3, help="bare loop: profile N steps for the time breakdown")
    args = ap.parse_args()

    bare_res = bare_loop(args, "--batch", str(args.batch * args.workers), "--profile", str(args.profile))
    # W workers: also the torchrun-style loop (W gloo ranks, FSDP2, 1/W of the threads each),
    # which separates what data parallelism costs on this host from what the stack adds.
    dist_res = bare_loop(args, "--batch", str(args.batch), "--nproc", str(args.workers)) if args.workers > 1 else None

    import ray
    import torch

    from ogi_ray.corpus.manifest import load_manifest
    from ogi_ray.storage import Store
    from ogi_ray.train.config import job_from_dict
    from ogi_ray.train.driver import train
    from ogi_ray.train.metrics_log import by_step, read_rows

    vocab = int(load_manifest(args.corpus)["tokenizers"]["text"]["vocab_size"])
    with tempfile.TemporaryDirectory() as tmp:
        job = job_from_dict({
            "model": {"preset": args.preset, "vocab_size": vocab},
            "data": {"corpus": args.corpus, "batch_size": args.batch, "seq_len": args.seq, "accum_steps": 1},
            "loop": {"steps": args.steps, "checkpoint_every": args.checkpoint_every or args.steps,
                     "log_every": args.checkpoint_every or args.steps},
            "evals": {"enabled": args.evals, "suite": "quick", "priority": args.eval_priority},
            # As many torch threads per worker as the bare loop has in all (Ray would give
            # a 0.5-CPU worker one), so the ratio measures the stack, not the thread count.
            "workers": {"num_workers": args.workers, "cpus_per_worker": 0.5,
                        "threads": max(1, torch.get_num_threads() // args.workers)},
            "device": {"device": "cpu", "precision": args.precision, "compile": args.compile},
            "run": {"name": "bench", "storage_path": tmp},
        })  # fmt: skip
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        with CpuByProcess() as cpu:
            summary = train(job, quiet=True)
        wall = time.perf_counter() - t0
        rows = by_step(read_rows(Store(summary["run_dir"])))
        ray.shutdown()
    rows = rows[2:]  # warm-up steps excluded, as in the bare loop
    stack_tps = median([r["tokens_per_s"] for r in rows])
    # A step's time runs from the end of the one before, so a checkpoint (and the eval
    # dispatch) lands in the next step: the mean over all steps counts it, the median not.
    stack_mean_tps = sum(r["batch_tokens"] for r in rows) / sum(r["batch_tokens"] / r["tokens_per_s"] for r in rows)
    dist = {} if dist_res is None else {
        "bare_dist_text_tokens_per_s": dist_res["text_tokens_per_s"], "bare_dist_step_s": dist_res["step_s"],
        "stack_over_bare_dist": stack_tps / dist_res["text_tokens_per_s"],
        "stack_mean_over_bare_dist": stack_mean_tps / dist_res["text_tokens_per_s"],
    }  # fmt: skip
    print(json.dumps({
        "preset": args.preset, "steps": args.steps, "workers": args.workers, "compile": args.compile,
        "checkpoint_every": args.checkpoint_every or args.steps, "evals": args.evals,
        "attestations": summary.get("attestations"), "eval_wait_s": summary.get("eval_wait_s"),
        "bare_text_tokens_per_s": bare_res["text_tokens_per_s"], "stack_text_tokens_per_s": stack_tps,
        "stack_over_bare": stack_tps / bare_res["text_tokens_per_s"],
        "stack_mean_text_tokens_per_s": stack_mean_tps,
        "stack_mean_over_bare": stack_mean_tps / bare_res["text_tokens_per_s"],
        **dist,
        # Per-step figures separate a slower step from a step that feeds fewer text tokens.
        "bare_step_s": bare_res["step_s"], "stack_step_s": median([r["batch_tokens"] / r["tokens_per_s"] for r in rows]),
        "bare_text_tokens_per_step": bare_res["text_tokens_per_step"],
        "stack_text_tokens_per_step": sum(r["batch_tokens"] for r in rows) / len(rows),
        "stack_data_wait_fraction": median([r["data_wait_fraction"] for r in rows]),
        "stack_mfu": median([r["mfu"] for r in rows]), "bare_mfu": bare_res["mfu"],
        # The matmul probe swings 0.3-1.1 TFLOP/s on this shared host from one moment to
        # the next: against one peak (the bare loop's), the stack's MFU is the ratio × it.
        "stack_mfu_vs_bare_peak": bare_res["mfu"] * stack_tps / bare_res["text_tokens_per_s"],
        "peak_flops_bare": bare_res["peak_flops"],
        "peak_flops_stack": summary["peak_flops"],
        "bare_time_breakdown": bare_res["time_breakdown"],
        # Where the host's CPU went during train(): the workers' share against Ray's own
        # processes (raylet, GCS, the driver, Ray Train's controller, the actors).
        "stack_wall_s": round(wall, 2), "stack_cpu_s_by_process": cpu.by_kind(),
        "checkpoint_s_rank0": summary.get("checkpoint_s"),
    }, indent=1))  # fmt: skip


class CpuByProcess:
    """CPU seconds per process kind while a block runs, from /proc (Linux): a thread
    samples every process's utime + stime each ``period`` s and keeps the last value, so
    processes that start and end inside the block (Ray Train's workers) are counted, less
    at most one period each. Kinds are the process titles Ray sets ("ray::RayTrainWorker",
    "raylet", "gcs_server", ...) or the executable's name."""

    def __init__(self, period: float = 0.25) -> None:
        import threading

        self.period, self.stop = period, threading.Event()
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _sample() -> dict[int, tuple[str, float]]:
        import os

        tick, out = os.sysconf("SC_CLK_TCK"), {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state is field 3
            title = argv[0].decode(errors="replace").split()[0] if argv and argv[0] else stat.split("(")[1].split(")")[0]
            out[int(pid)] = (Path(title).name if "/" in title else title, (int(fields[11]) + int(fields[12])) / tick)
        return out

    def _run(self) -> None:
        while not self.stop.is_set():
            for pid, (kind, cpu) in self._sample().items():
                self.first.setdefault(pid, cpu)
                self.last[pid] = (kind, cpu)
            self.stop.wait(self.period)

    def __enter__(self) -> CpuByProcess:
        self.first = {pid: cpu for pid, (_, cpu) in self._sample().items()}
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def by_kind(self) -> dict[str, float]:
        """CPU seconds per kind, largest first (kinds under 0.05 s left out)."""
        out: dict[str, float] = {}
        for pid, (kind, cpu) in self.last.items():
            out[kind] = out.get(kind, 0.0) + cpu - self.first.get(pid, 0.0)
        return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def bare_loop(args: argparse.Namespace, *extra: str) -> dict:
    """benchmarks/bare_loop.py on the same corpus, model and steps, in a subprocess: its
    JSON line."""
    here = Path(__file__).resolve().parent
    out = subprocess.run(
        [sys.executable, str(here / "bare_loop.py"), "--corpus", args.corpus, "--preset", args.preset,
         "--steps", str(args.steps), "--seq", str(args.seq), "--device", "cpu", "--precision", args.precision,
         *extra, *(["--compile"] if args.compile else [])],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    return json.loads(out)


if __name__ == "__main__":
    main()
