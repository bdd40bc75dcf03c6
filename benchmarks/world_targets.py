"""Is a run's world loss learning, collapse, or a trivial task? Measures every checkpoint.

    python benchmarks/world_targets.py RUN [--rows 64] [--before-fix]
    python benchmarks/world_targets.py --train CORPUS [--steps 100] [--every 50]
        [--ema-decay 1.0] [--lambda-world 1.0] [--tuner off] [--batch 32]

``--train`` measures a bare training loop instead of a run: the tiny preset fitted to
CORPUS (seq 128, as the demo), the workers' step (train/step.py PlainStep, one
micro-batch of --batch rows in corpus order, one thread), fixed λ (1, λ_world as given)
or the tuner in process, measured at step 0 and every --every steps.

For the initial weights (step 0: ``model.build(cfg, seed=loop.seed)``, as the workers),
each checkpoint (ogi_ray.evals.load) and for the corpus' video and robot rows
(training shards, the first --rows of each source: the held-out split is too small in
the demo corpus), one JSON line with:

* the world eval's figures (ogi_ray.evals.world.scores_from): the model's next-chunk
  error, the copy-last-chunk and predict-the-mean baselines, their ratio, and
  target_std (std of the target latents across chunks, mean over dims; each target has
  unit variance over its dims, so ≈ 0 means all targets alike);
* target_cos: the mean pairwise cosine of the target latents (1 = all alike);
* online_target_std: the same spread for targets from the online tubelet embedder (what
  the EMA target follows);
* raw_consecutive: mean squared pixel difference between consecutive chunks over twice
  the pixel variance across chunks (0 = consecutive chunks identical, 1 = as different as
  two random chunks): how trivial the task is in the data itself.

``--before-fix`` computes the targets as the objective did before the tubelet mean was
removed (LN of the pooled W·x), to measure runs trained with that objective.
"""

from __future__ import annotations

import argparse
import json

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from ogi_ray.corpus.manifest import shard_paths
from ogi_ray.corpus.text_tokenizer import from_corpus
from ogi_ray.evals.forward import model_batch
from ogi_ray.evals.load import checkpoint_steps, load_run
from ogi_ray.evals.world import scores_from
from ogi_ray.train.data import COLUMNS
from ogi_ray.train.losses import world_pairs, world_targets


def source_batches(lm, rows: int) -> dict[str, dict[str, torch.Tensor]]:
    t = pa.concat_tables([pq.read_table(p, columns=COLUMNS) for p in shard_paths(lm.corpus_dir)]).to_pydict()
    out = {}
    for src in sorted(set(t["source"])):
        idx = [i for i, (s, v) in enumerate(zip(t["source"], t["video_tubelets"], strict=True)) if s == src and v][:rows]
        if idx:
            out[src] = model_batch({c: [t[c][i] for i in idx] for c in COLUMNS}, lm.cfg)
    return out


def targets_before_fix(vid: torch.Tensor, weight: torch.Tensor, cfg) -> torch.Tensor:
    lay = cfg.layout
    tgt = F.linear(vid, weight).unflatten(1, (lay.n_chunks, lay.vid_group)).mean(2)
    return F.layer_norm(tgt.float(), tgt.shape[-1:])


def measure(lm, b: dict[str, torch.Tensor], before_fix: bool) -> dict[str, float]:
    targets = targets_before_fix if before_fix else world_targets
    lay = lm.cfg.layout
    present = b["vid_present"].unflatten(1, (lay.n_chunks, lay.vid_group)).all(2)  # (B, C)
    valid = world_pairs(b["vid_present"], lm.cfg)
    with torch.no_grad():
        _, out = lm.model(b)
        tgt = targets(b["vid"], lm.world_target.weight, lm.cfg)
        online = targets(b["vid"], lm.model.vid_embed.weight, lm.cfg)
    z = F.normalize(tgt[present], dim=-1)
    raw = b["vid"].unflatten(1, (lay.n_chunks, lay.vid_group))  # (B, C, G, vid_dim)
    diff = ((raw[:, 1:] - raw[:, :-1]) ** 2).mean((-1, -2))[valid].mean()
    var = raw[present].var(0).mean()
    return {**scores_from(out["world_pred"].float(), tgt, valid, present),
            "target_cos": float((z @ z.T).mean()), "online_target_std": float(online[present].std(0).mean()),
            "raw_consecutive": float(diff / (2 * var)), "rows": int(valid.any(1).sum())}  # fmt: skip


def initial(lm, seed: int):
    """The run's step-0 weights, built as the workers build them."""
    from dataclasses import replace

    from ogi_ray.model import build
    from ogi_ray.train.step import make_world_target

    model = build(lm.cfg, seed=seed).eval()
    return replace(lm, model=model, world_target=make_world_target(lm.cfg, seed, torch.device("cpu")))


def train_and_measure(args: argparse.Namespace) -> None:
    from ogi_ray.corpus.manifest import load_manifest
    from ogi_ray.evals.common import LoadedModel
    from ogi_ray.model import build
    from ogi_ray.parallel.device import DeviceConfig, resolve
    from ogi_ray.train.config import job_from_dict
    from ogi_ray.train.data import collate, seeded_generator
    from ogi_ray.train.launch import fit_model_to_corpus
    from ogi_ray.train.optim import build_optimizer
    from ogi_ray.train.step import PlainStep, make_world_target
    from ogi_ray.train.tuner import LossWeightTuner, TunerConfig

    manifest = load_manifest(args.train)
    job = job_from_dict({"model": {"preset": "tiny", "ema_decay": args.ema_decay},
                         "data": {"corpus": args.train, "seq_len": 128}, "loop": {"steps": args.steps},
                         "optim": {"lr": 3e-3, "min_lr": 3e-4}})  # fmt: skip
    cfg = fit_model_to_corpus(job, manifest).model
    model = build(cfg, seed=0)
    target = make_world_target(cfg, 0, torch.device("cpu"))
    opt, sched = build_optimizer(model, job.optim, args.steps)
    placement = resolve(DeviceConfig(device="cpu", precision="fp32"))
    stepper = PlainStep(model, cfg, placement, grad_clip=1.0)
    table = pa.concat_tables([pq.read_table(p, columns=COLUMNS) for p in shard_paths(args.train)])
    tuner = LossWeightTuner(TunerConfig(objectives=cfg.objectives, warmup=10, enabled=args.tuner == "on"))
    fixed = {k: (args.lambda_world if k == "world" else 1.0) for k in cfg.objectives}
    tok = from_corpus(args.train)
    lm = LoadedModel(model, cfg, manifest, tok, corpus_dir=args.train, world_target=target)
    batches = source_batches(lm, args.rows)
    for step in range(args.steps + 1):
        if step % args.every == 0:
            for src, b in batches.items():
                print(json.dumps({"step": step, "source": src, "ema_decay": args.ema_decay,
                                  "lambda_world": args.lambda_world, "tuner": args.tuner,
                                  **{k: round(v, 6) for k, v in measure(lm, b, False).items()}}), flush=True)  # fmt: skip
        if step == args.steps:
            break
        rows = table.take([(step * args.batch + i) % table.num_rows for i in range(args.batch)]).to_pydict()
        m = stepper.train(opt, sched, [collate(rows, cfg, seeded_generator(0, step, 0))], world_target=target,
                          lambdas=tuner.weights() if args.tuner == "on" else fixed)  # fmt: skip
        tuner.report(step, {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("gradnorm_raw/")})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", nargs="?", help="run folder (or --train CORPUS)")
    ap.add_argument("--train", default="", help="corpus folder: measure a bare training loop instead")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--ema-decay", type=float, default=1.0)
    ap.add_argument("--lambda-world", type=float, default=1.0)
    ap.add_argument("--tuner", choices=["on", "off"], default="off")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="the run's loop.seed (step-0 weights)")
    ap.add_argument("--before-fix", action="store_true", help="targets as the objective computed them before the fix")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.train:
        return train_and_measure(args)
    steps = checkpoint_steps(args.run)
    if not steps:
        raise SystemExit(f"{args.run}: no checkpoints")
    for step in [0, *steps]:
        lm = initial(load_run(args.run, steps[0]), args.seed) if step == 0 else load_run(args.run, step)
        for src, b in source_batches(lm, args.rows).items():
            print(json.dumps({"step": step, "source": src, **{k: round(v, 6) for k, v in measure(lm, b, args.before_fix).items()}}))


if __name__ == "__main__":
    main()
