"""Is a run's world loss learning, collapse, or a trivial task? Measures every checkpoint.

    python benchmarks/world_targets.py RUN [--rows 64] [--before-fix]

For the initial weights (step 0: the trainer's torch.manual_seed(loop.seed) then build),
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
    from ogi_ray.train.loop import make_world_target

    torch.manual_seed(seed)
    model = build(lm.cfg).eval()
    return replace(lm, model=model, world_target=make_world_target(model))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="the run's loop.seed (step-0 weights)")
    ap.add_argument("--before-fix", action="store_true", help="targets as the objective computed them before the fix")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = checkpoint_steps(args.run)
    if not steps:
        raise SystemExit(f"{args.run}: no checkpoints")
    for step in [0, *steps]:
        lm = initial(load_run(args.run, steps[0]), args.seed) if step == 0 else load_run(args.run, step)
        for src, b in source_batches(lm, args.rows).items():
            print(json.dumps({"step": step, "source": src, **{k: round(v, 6) for k, v in measure(lm, b, args.before_fix).items()}}))


if __name__ == "__main__":
    main()
