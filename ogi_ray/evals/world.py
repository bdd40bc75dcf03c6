"""World model: is the next-chunk prediction better than copying the last chunk, and
are the targets informative at all?

Data: the corpus' held-out rows with video (up to ``rows_per_source`` per source, first
rows in file order: train/data.read_heldout, as the training-side eval reads them).
``data_sha256`` is the SHA-256 of the held-out shard files' bytes, in manifest order
(common.heldout_sha256: path, length and bytes of each).

    rows ─► collate ─► model ─► world_pred (B, C−1, E): chunk c+1 predicted from chunk c
    tubelets ─► train/losses.world_targets (the EMA target encoder, pooled per chunk,
                layer-normed) ─► targets (B, C, E)
    model_error = world_loss(pred, targets[:, 1:])            (the training objective)
    copy_error  = world_loss(targets[:, :-1], targets[:, 1:])  (predict "no change")
    mean_error  = world_loss(mean target, targets[:, 1:])      (predict a constant)
    error_ratio = model_error / copy_error: < 1 means the model beats copying
    target_std  = mean over the E dims of the std over all present chunks: each target
                  has unit variance over E (layer norm), so ≈ 0 means every chunk maps
                  to the same vector (collapse); ≈ 1 means targets as varied as noise
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ogi_ray.evals.common import EvalError, LoadedModel, heldout_paths, heldout_sha256
from ogi_ray.evals.forward import model_batch
from ogi_ray.model.objectives import world_loss
from ogi_ray.train.data import read_heldout
from ogi_ray.train.losses import world_pairs, world_targets

NAME = "world"
VERSION = "1"


@dataclass(kw_only=True)
class Config:
    rows_per_source: int = 64  # held-out rows read per source (those with video are used)


def skip_reason(lm: LoadedModel, config: Config) -> str | None:
    if lm.cfg.layout.n_chunks < 2 or getattr(lm.model, "world_head", None) is None:
        return "the model has fewer than two video time chunks (no world objective)"
    if not lm.corpus_dir or not lm.manifest.get("heldout_shards"):
        return "no held-out shards to read video from"
    return None


def data_sha256(lm: LoadedModel, config: Config) -> str:
    return heldout_sha256(lm)


def video_batch(lm: LoadedModel, config: Config) -> dict[str, torch.Tensor]:
    """The held-out rows that hold at least one pair of whole chunks, as one batch."""
    by_source = read_heldout([str(p) for p in heldout_paths(lm)], config.rows_per_source)
    batches = [model_batch(cols, lm.cfg) for _, cols in sorted(by_source.items())]
    keep = [{k: v[world_pairs(b["vid_present"], lm.cfg).any(1)] for k, v in b.items() if v.dim()}
            for b in batches]  # fmt: skip
    keep = [b for b in keep if len(b["vid"])]
    if not keep:
        raise EvalError(f"{lm.corpus_dir}: no held-out row has two whole video chunks")
    return {k: torch.cat([b[k] for b in keep]) for k in keep[0]}


def scores_from(pred: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, present: torch.Tensor) -> dict[str, float]:
    """pred (B, C−1, E), targets (B, C, E), valid (B, C−1) pairs, present (B, C) chunks."""
    model = float(world_loss(pred, targets[:, 1:], valid))
    copy = float(world_loss(targets[:, :-1], targets[:, 1:], valid))
    z = targets[present].double()  # (N, E) every present chunk's target
    mean = float(world_loss(z.mean(0).float().expand_as(targets[:, 1:]), targets[:, 1:], valid))
    out = {"world/model_error": model, "world/copy_error": copy, "world/mean_error": mean,
           "world/target_std": float(z.std(0).mean())}  # fmt: skip
    if copy > 0:  # (identical consecutive chunks: no ratio, the copy is perfect)
        out["world/error_ratio"] = model / copy
    return out


def run(lm: LoadedModel, config: Config) -> dict[str, float]:
    b = video_batch(lm, config)
    lay = lm.cfg.layout
    _, out = lm.model(b)
    target = lm.world_target if lm.world_target is not None else lm.model.vid_embed
    targets = world_targets(b["vid"], target.weight, lm.cfg)  # (B, C, E)
    present = b["vid_present"].unflatten(1, (lay.n_chunks, lay.vid_group)).all(2)
    return scores_from(out["world_pred"].float(), targets, world_pairs(b["vid_present"], lm.cfg), present)
