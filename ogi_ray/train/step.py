"""The training step and evaluation, plain or pipelined, with one metrics path (no Ray).

One optimizer step over ``k`` micro-batches:

    plain (PlainStep):  for each micro-batch: forward ─► h, heads ─► losses L_i
                        (train/losses.py); first micro-batch: ‖∂L_i/∂h‖ per objective
                        (for the tuner); backward of Σ λ_i L_i / k; after the first:
                        ‖g‖² of one micro-batch (the GNS small batch)
    pipelined (PipelineStep): the micro-batches concatenated ─► Schedule1F1B over the
                        stages; on the last stage ``PipelineLoss`` computes the same
                        losses and norms per micro-batch and records them; the schedule
                        averages gradients over micro-batches
    both: per-objective means and norms (``StepRecord.metrics``, broadcast from the last
          stage under pp) ─► ‖g‖² of the step (GNS big batch) ─► clip at grad_clip ─►
          AdamW ─► schedule ─► EMA of the world-model target encoder (``ema_update``)

Evaluation scores held-out batches per source with ``score_outputs`` in both cases (the
pipelined one passes activations stage to stage first). The worker (train/trainer.py)
supplies batches and λ; the same objects replay recorded steps (train/replay.py).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ogi_ray.model.config import ModelConfig
from ogi_ray.model.objectives import recall_at_1, representation_grad_norms
from ogi_ray.parallel.apply import clip_grad_norm_, grad_sq_norm
from ogi_ray.parallel.device import Placement
from ogi_ray.parallel.pipeline import Pipeline, batch_keys, stage_kwargs
from ogi_ray.train.losses import compute_losses, pooled


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def autocast(placement: Placement) -> Any:
    if placement.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(placement.device.type, dtype=placement.autocast_dtype)


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# ── the world-model target encoder ──────────────────────────────────────────────────


def make_world_target(cfg: ModelConfig, seed: int, device: torch.device) -> nn.Module | None:
    """The EMA target encoder (a replicated copy of the tubelet embedder, stop-gradient),
    starting from the embedder's initial values (model.transformer.initial_value), so it
    needs neither the full model nor a collective."""
    from ogi_ray.model.transformer import initial_value

    if not (cfg.layout.n_vid and cfg.layout.n_chunks >= 2):
        return None
    target = nn.Linear(cfg.vid_dim, cfg.dim)
    with torch.no_grad():
        target.weight.copy_(initial_value(cfg, "vid_embed.weight", (cfg.dim, cfg.vid_dim), seed))
        target.bias.copy_(initial_value(cfg, "vid_embed.bias", (cfg.dim,), seed))
    return target.requires_grad_(False).to(device)


@torch.no_grad()
def ema_update(target: nn.Module, weight: torch.Tensor, bias: torch.Tensor, decay: float) -> None:
    """target ← decay·target + (1 − decay)·(weight, bias)."""
    target.weight.lerp_(weight.to(target.weight.device), 1 - decay)
    target.bias.lerp_(bias.to(target.bias.device), 1 - decay)


# ── metrics shared by both steps ────────────────────────────────────────────────────


@dataclass
class StepRecord:
    """What one step measured, before the optimizer update."""

    loss_sums: dict[str, float] = field(default_factory=dict)
    loss_counts: dict[str, int] = field(default_factory=dict)
    norms: dict[str, float] = field(default_factory=dict)  # first micro-batch, ‖∂L_i/∂h‖

    def add(self, losses: dict[str, Any]) -> None:
        for n, v in losses.items():
            value = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
            self.loss_sums[n] = self.loss_sums.get(n, 0.0) + value
            self.loss_counts[n] = self.loss_counts.get(n, 0) + 1

    @classmethod
    def of_calls(cls, calls: list[tuple[dict[str, float], dict[str, float]]]) -> StepRecord:
        """From per-micro-batch (losses, norms); the norms are the first call's."""
        rec = cls()
        for losses, _ in calls:
            rec.add(losses)
        rec.norms = dict(calls[0][1]) if calls else {}
        return rec

    def means(self) -> dict[str, float]:
        return {n: self.loss_sums[n] / self.loss_counts[n] for n in self.loss_sums}


def first_norms(losses: dict[str, torch.Tensor], h: torch.Tensor, anchor: torch.Tensor,
                objectives: list[str]) -> dict[str, float]:  # fmt: skip
    """‖∂L_i/∂h‖ of the objectives present; absent ones are anchored at 0 so that every
    rank runs the same backward graph (FSDP's hooks issue collectives per pass)."""
    every = {n: losses.get(n, anchor) for n in objectives}
    return {n: v for n, v in representation_grad_norms(every, h).items() if n in losses}


def touch_all(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """0 · Σ every head: an objective absent from this rank's rows still joins the
    backward graph, or FSDP's per-pass collectives would deadlock the other ranks."""
    return 0.0 * sum(o.float().sum() for o in out.values())


def step_metrics(lr: float, grad_norm: float, big_sq: float, small_sq: float | None,
                 losses: dict[str, float], norms: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    """The metrics dict every step returns (plain and pipelined alike)."""
    metrics: dict[str, Any] = {"lr": lr, "grad_norm": grad_norm, "gns_big_sq": big_sq, "gns_small_sq": small_sq}
    for n, value in losses.items():
        if not math.isfinite(value):
            raise FloatingPointError(f"loss/{n} is {value}")
        metrics[f"loss/{n}"] = value
        metrics[f"gradnorm_raw/{n}"] = norms.get(n, 0.0)
    return metrics


def _update(params: list[nn.Parameter], opt: Any, sched: Any, grad_clip: float, pp_group: Any = None) -> tuple[float, float, float]:
    """‖g‖² (GNS big batch), clip, AdamW, schedule: (big_sq, grad_norm, lr before the step)."""
    big_sq = float(grad_sq_norm(params, pp_group))
    grad_norm = clip_grad_norm_(params, grad_clip, pp_group)
    lr = opt.param_groups[0]["lr"]
    opt.step()
    sched.step()
    return big_sq, grad_norm, lr


def score_outputs(out: dict[str, torch.Tensor], b: dict[str, torch.Tensor], cfg: ModelConfig,
                  world_target: nn.Module | None, source: str) -> dict[str, float]:  # fmt: skip
    """Held-out scores of one source's batch from the heads' outputs: each objective's
    loss (lm as perplexity) and, when rows pair images with text, retrieval recall@1."""
    scores: dict[str, float] = {}
    for n, v in compute_losses(out, b, cfg, world_target).items():
        key = "perplexity" if n == "lm" else n
        scores[f"{key}/{source}"] = math.exp(min(float(v), 50.0)) if n == "lm" else float(v)
    if "img_lat" in out:
        rows = b["img_present"].any(1) & b["text_valid"].any(1)
        if int(rows.sum()) >= 2:
            zi = pooled(out["img_lat"][rows], b["img_present"][rows]).float()
            zt = pooled(out["txt_lat"][rows], b["text_valid"][rows]).float()
            scores[f"recall@1/{source}"] = float(recall_at_1(zi, zt))
    return scores


# ── plain (no pipeline) ─────────────────────────────────────────────────────────────


@dataclass
class PlainStep:
    module: nn.Module  # the model (FSDP/TP applied, or plain)
    cfg: ModelConfig
    placement: Placement
    grad_clip: float

    def train(self, opt: Any, sched: Any, micro: list[dict[str, torch.Tensor]], *,
              lambdas: dict[str, float], world_target: nn.Module | None) -> dict[str, Any]:  # fmt: skip
        k, rec, small_sq = len(micro), StepRecord(), None
        opt.zero_grad(set_to_none=True)
        for i, batch in enumerate(micro):
            b = to_device(batch, self.placement.device)
            with autocast(self.placement):
                h, out = self.module(b)
                losses = compute_losses(out, b, self.cfg, world_target)
            anchor = touch_all(out)
            if i == 0:
                rec.norms = first_norms(losses, h, anchor, self.cfg.objectives)
            (sum(lambdas.get(n, 1.0) * v for n, v in losses.items()) / k + anchor).backward()
            rec.add(losses)
            if i == 0 and k > 1:
                small_sq = float(grad_sq_norm(self.module.parameters())) * k * k  # undo the 1/k
        big_sq, grad_norm, lr = _update(list(self.module.parameters()), opt, sched, self.grad_clip)
        if world_target is not None:
            emb = self.module.vid_embed
            ema_update(world_target, _full(emb.weight.detach()), _full(emb.bias.detach()), self.cfg.ema_decay)
        return step_metrics(lr, grad_norm, big_sq, small_sq, rec.means(), rec.norms)

    @torch.no_grad()
    def evaluate(self, batches: dict[str, dict[str, torch.Tensor]], world_target: nn.Module | None) -> dict[str, float]:
        """{"<objective>/<source>": loss} (lm as ``perplexity/<source>``) and recall@1."""
        self.module.eval()
        scores: dict[str, float] = {}
        for source, batch in sorted(batches.items()):
            b = to_device(batch, self.placement.device)
            with autocast(self.placement):
                _, out = self.module(b)
                scores |= score_outputs(out, b, self.cfg, world_target, source)
        self.module.train()
        return scores


# ── pipelined ───────────────────────────────────────────────────────────────────────


class PipelineLoss:
    """The schedule's loss function on the last stage: output = (h (b, S, D), *heads),
    rows (b,) the indices of one micro-batch in the step's batch → Σ λ_i L_i (+ 0·anchor),
    recording each call's losses (and the first micro-batch's norms) in ``calls``."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg
        self.batch: dict[str, torch.Tensor] = {}
        self.lambdas: dict[str, float] = {}
        self.world_target: nn.Module | None = None
        self.module: nn.Module | None = None  # the last stage (its forward names the heads)
        self.calls: list[tuple[dict[str, float], dict[str, float]]] = []

    def __call__(self, output: tuple[torch.Tensor, ...], rows: torch.Tensor) -> torch.Tensor:
        h, *heads = output
        out = dict(zip(self.module.head_keys, heads, strict=True))  # type: ignore[union-attr]
        b = {k: v[rows] for k, v in self.batch.items()}
        losses = compute_losses(out, b, self.cfg, self.world_target)
        anchor = touch_all(out)
        # The step's first micro-batch gives the tuner's norms, as PlainStep measures them.
        norms = first_norms(losses, h, anchor, self.cfg.objectives) if int(rows[0]) == 0 else {}
        self.calls.append(({n: float(v.detach()) for n, v in losses.items()}, norms))
        return sum(self.lambdas.get(n, 1.0) * v for n, v in losses.items()) + anchor


def _broadcast_record(pipe: Pipeline, rec: StepRecord, objectives: list[str]) -> tuple[dict, dict]:
    """(loss means, norms) computed on the last stage, on every pp rank."""
    t = torch.zeros(len(objectives), 4, dtype=torch.float64)  # Σ loss, count, norm, has norm
    if pipe.is_last:
        for i, n in enumerate(objectives):
            if n in rec.loss_sums:
                t[i, 0], t[i, 1] = rec.loss_sums[n], rec.loss_counts[n]
            if n in rec.norms:
                t[i, 2], t[i, 3] = rec.norms[n], 1.0
    if pipe.pp_size > 1:
        dist.broadcast(t, group=pipe.pp_group, group_src=pipe.pp_size - 1)
    losses = {n: float(t[i, 0] / t[i, 1]) for i, n in enumerate(objectives) if t[i, 1] > 0}
    norms = {n: float(t[i, 2]) for i, n in enumerate(objectives) if t[i, 3] > 0}
    return losses, norms


def _stage_embedder(pipe: Pipeline, world_target: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The first stage's tubelet embedder (gathered over FSDP/TP), broadcast over pp."""
    w, b = torch.empty_like(world_target.weight), torch.empty_like(world_target.bias)
    if pipe.is_first:
        emb = pipe.module.vid_embed
        w, b = _full(emb.weight.detach()).to(w.device).clone(), _full(emb.bias.detach()).to(b.device).clone()
    if pipe.pp_size > 1:
        dist.broadcast(w, group=pipe.pp_group, group_src=0)
        dist.broadcast(b, group=pipe.pp_group, group_src=0)
    return w, b


@dataclass
class PipelineStep:
    pipe: Pipeline
    loss: PipelineLoss
    cfg: ModelConfig
    placement: Placement
    grad_clip: float
    seq_split: int = 1  # tp under sequence parallelism: stages pass (B, S/tp, D) shards

    @property
    def module(self) -> nn.Module:
        return self.pipe.module

    def train(self, opt: Any, sched: Any, micro: list[dict[str, torch.Tensor]], *,
              lambdas: dict[str, float], world_target: nn.Module | None) -> dict[str, Any]:  # fmt: skip
        """The ``micro`` batches are concatenated and the schedule splits them into
        ``pipe.n_microbatches`` (= len(micro): the same micro-batches, hence the same
        losses, as PlainStep's accumulation). The GNS small batch is not measured."""
        pipe, dev = self.pipe, self.placement.device
        keys = batch_keys(micro[0])
        batch = {k: torch.cat([m[k] for m in micro]).to(dev) for k in (*keys, *stage_kwargs(micro[0]))}
        n_rows = batch["tokens"].shape[0]
        if n_rows < pipe.n_microbatches:
            raise ValueError(f"batch: {n_rows} rows cannot fill {pipe.n_microbatches} micro-batches")
        pipe.module.input_keys = keys
        self.loss.batch, self.loss.lambdas, self.loss.world_target = batch, dict(lambdas), world_target
        self.loss.module, self.loss.calls = pipe.module, []
        opt.zero_grad(set_to_none=True)
        args = tuple(batch[k] for k in keys) if pipe.is_first else ()
        target = torch.arange(n_rows, device=dev) if pipe.is_last else None
        with autocast(self.placement):
            pipe.schedule.step(*args, target=target, return_outputs=False, **stage_kwargs(batch))
        # The first step's shape inference also calls the loss once (placeholder inputs):
        # keep only the real micro-batches' calls.
        rec = StepRecord.of_calls(self.loss.calls[-pipe.n_microbatches :])
        self.loss.batch, self.loss.calls = {}, []
        losses, norms = _broadcast_record(pipe, rec, self.cfg.objectives)
        big_sq, grad_norm, lr = _update(list(pipe.module.parameters()), opt, sched, self.grad_clip, pipe.pp_group)
        if world_target is not None:
            ema_update(world_target, *_stage_embedder(pipe, world_target), self.cfg.ema_decay)
        return step_metrics(lr, grad_norm, big_sq, None, losses, norms)

    @torch.no_grad()
    def evaluate(self, batches: dict[str, dict[str, torch.Tensor]], world_target: nn.Module | None) -> dict[str, float]:
        """PlainStep.evaluate through the stages: one batch per source, activations
        x (B, S, D) sent stage to stage (no schedule); scores broadcast over pp."""
        pipe, module, dev = self.pipe, self.pipe.module, self.placement.device
        module.eval()
        scores: dict[str, float] = {}
        for source, batch in sorted(batches.items()):
            b = to_device(batch, dev)
            module.input_keys = keys = batch_keys(b)
            with autocast(self.placement):
                if pipe.is_first:
                    x = module(*(b[k] for k in keys), **stage_kwargs(b))
                else:
                    x = torch.empty((b["tokens"].shape[0], self.cfg.max_seq_len // self.seq_split, self.cfg.dim),
                                    device=dev)  # fmt: skip
                    dist.recv(x, group=pipe.pp_group, group_src=pipe.pp_rank - 1)
                    x = module(x, **stage_kwargs(b))
                if not pipe.is_last:
                    dist.send(x.float().contiguous(), group=pipe.pp_group, group_dst=pipe.pp_rank + 1)
                    continue
                _, *heads = x
                scores |= score_outputs(dict(zip(module.head_keys, heads, strict=True)), b, self.cfg,
                                        world_target, source)  # fmt: skip
        module.train()
        if pipe.pp_size > 1:
            box = [scores]
            dist.broadcast_object_list(box, group=pipe.pp_group, group_src=pipe.pp_size - 1)
            scores = box[0]
        return scores

