"""Wall time of each eval-suite benchmark, beside one training step, per model preset.

    python benchmarks/eval_suite.py --corpus DIR [--presets tiny small] [--suite quick|full]
        [--threads 1] [--seq 128] [--video-tubelets 64|128] [--batch 8]

For each preset: the model is fitted to the corpus' layout (train/driver.fit_model_to_corpus,
as a job would be), randomly initialised (seed 0: wall time depends on shapes, not on
what was learned, except that a trained model may stop generating earlier), one training
step on ``--batch`` rows is timed (median of 3, after one warm-up), then the suite runs
with ``--threads`` torch threads, one benchmark at a time. One JSON line per preset: the
step's seconds, each benchmark's wall and CPU seconds (this process and its children:
the sandboxed HumanEval programs) and number of scores, and the load average. On a
shared machine wall time scales with the load; CPU time much less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ogi_ray.corpus.manifest import load_manifest, shard_paths
from ogi_ray.corpus.text_tokenizer import from_corpus
from ogi_ray.evals.common import LoadedModel
from ogi_ray.evals.suite import QUICK, SuiteConfig, run_suite
from ogi_ray.model import build
from ogi_ray.parallel.device import DeviceConfig, resolve
from ogi_ray.train.config import job_from_dict
from ogi_ray.train.data import COLUMNS, collate, seeded_generator
from ogi_ray.train.launch import fit_model_to_corpus
from ogi_ray.train.optim import build_optimizer
from ogi_ray.train.step import PlainStep, make_world_target


def step_seconds(model, world_target, job, corpus: str, batch: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of a training step of ``batch`` rows (after a warm-up)."""
    table = pa.concat_tables([pq.read_table(p, columns=COLUMNS) for p in shard_paths(corpus)])
    opt, sched = build_optimizer(model, job.optim, 10)
    placement = resolve(DeviceConfig(device="cpu", precision="fp32"))
    stepper = PlainStep(model, job.model, placement, grad_clip=1.0)
    wall, cpu = [], []
    for step in range(4):
        b = collate(table.slice(step * batch, batch).to_pydict(), job.model, seeded_generator(0, step, 0))
        t0, c0 = time.perf_counter(), time.process_time()
        stepper.train(opt, sched, [b], lambdas={}, world_target=world_target)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall[1:]), statistics.median(cpu[1:])


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (the sandboxed programs)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"])
    ap.add_argument("--suite", choices=["quick", "full"], default="quick")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--video-tubelets", type=int, default=64, help="data.max_video_tubelets (128: small.yaml)")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    manifest = load_manifest(args.corpus)
    tok = from_corpus(args.corpus)
    suite = replace(QUICK if args.suite == "quick" else SuiteConfig(), threads=args.threads)
    for name in args.presets:
        job = job_from_dict({"model": {"preset": name, "vocab_size": int(manifest["tokenizers"]["text"]["vocab_size"])},
                             "data": {"corpus": args.corpus, "seq_len": args.seq,
                                      "max_video_tubelets": args.video_tubelets}})  # fmt: skip
        job = fit_model_to_corpus(job, manifest)
        model = build(job.model, seed=0)
        target = make_world_target(job.model, 0, torch.device("cpu"))
        torch.set_num_threads(args.threads)
        step_wall, step_cpu = step_seconds(model, target, job, args.corpus, args.batch)
        lm = LoadedModel(model.eval(), job.model, manifest, tok, corpus_dir=args.corpus, world_target=target)
        per, skipped = {}, {}
        for bench in suite.benchmarks:  # one at a time, to charge CPU time (with children) to each
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            result = run_suite(lm, replace(suite, benchmarks=[bench]))
            skipped.update(result.skipped)
            if bench in result.seconds:
                per[bench] = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(cpu_seconds() - cpu0, 2),
                              "scores": len(result.scores)}  # fmt: skip
        print(json.dumps({"preset": name, "params": model.num_params(), "seq_len": job.model.max_seq_len,
                          "suite": args.suite, "threads": args.threads,
                          "train_step_wall_s": round(step_wall, 3), "train_step_cpu_s": round(step_cpu, 3),
                          "batch": args.batch, "benchmarks": per, "skipped": skipped,
                          "total_wall_s": round(sum(b["wall_s"] for b in per.values()), 1),
                          "total_cpu_s": round(sum(b["cpu_s"] for b in per.values()), 1),
                          "load_avg_1min": round(os.getloadavg()[0], 1)}), flush=True)  # fmt: skip

if __name__ == "__main__":
    main()
