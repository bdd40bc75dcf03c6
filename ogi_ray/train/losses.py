"""The five objectives of one step, computed from the model's head outputs and the batch.

    heads(h) + batch ─► lm      CE of text slot t against token t+1 (padding ignored)
                     ─► vision  MAE on masked patches (normalised pixels) + InfoNCE
                                between the pooled masked view and the augmented view
                     ─► align   CLIP loss: pooled image/video latents vs caption latents
                     ─► world   next-chunk latent vs stop-gradient EMA tubelet encoder
                                of mean-removed tubelets (world_targets)
                     ─► embod   flow-matching velocity on valid steps and action dims

An objective is present in a step only when the batch has rows it applies to (and at
least two for the contrastive ones); absent ones are simply missing from the dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ogi_ray.model.config import ModelConfig
from ogi_ray.model.objectives import (
    IGNORE,
    clip_loss,
    flow_matching_loss,
    info_nce,
    lm_loss,
    mae_loss,
    masked_mean,
    normalize_patches,
    world_loss,
)

INFO_NCE_TEMPERATURE = 0.1
VISION_CONTRASTIVE_WEIGHT = 0.5


def pooled(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, n, D), mask (B, n) → (B, D): the mean over each row's present slots."""
    return masked_mean(x, mask, dim=1)


def world_pairs(vid_present: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """vid_present (B, n_vid) → (B, C−1) bool: chunk c and c+1 both fully present."""
    lay = cfg.layout
    chunk_present = vid_present.unflatten(1, (lay.n_chunks, lay.vid_group)).all(2)  # (B, C)
    return chunk_present[:, :-1] & chunk_present[:, 1:]


@torch.no_grad()
def world_targets(vid: torch.Tensor, weight: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """vid (B, n_vid, vid_dim) tubelet pixels, weight (E, vid_dim) of the EMA target
    encoder → (B, C, E) float32 target latent of every time chunk (stop-gradient):
    LN(mean over the chunk's tubelets of W·(x − mean(x)))."""
    lay = cfg.layout
    # No bias, and each tubelet's mean pixel removed: a constant offset says nothing about
    # the next chunk. Pixels in [0, 1] share a large mean (≈ 0.4), so W·x ≈ x̄·(W·1) for
    # every tubelet; after pooling and normalising, every target was nearly the same
    # vector (pairwise cosine 0.99 at init), and the EMA encoder then collapsed onto it
    # (docs/objectives.md, "Was the world loss collapse?").
    tgt = F.linear(vid - vid.mean(-1, keepdim=True), weight)
    tgt = tgt.unflatten(1, (lay.n_chunks, lay.vid_group)).mean(2)  # (B, C, E)
    # Layer-normed targets (as V-JEPA does): the EMA encoder's scale drifts as it
    # trains, and an unnormalised target makes the loss track that drift.
    return F.layer_norm(tgt.float(), tgt.shape[-1:])


def compute_losses(
    out: dict[str, torch.Tensor], b: dict[str, torch.Tensor], cfg: ModelConfig,
    world_target: nn.Module | None,
) -> dict[str, torch.Tensor]:  # fmt: skip
    lay = cfg.layout
    losses: dict[str, torch.Tensor] = {}
    targets = b["tokens"][:, 1:].masked_fill(~b["text_valid"][:, 1:], IGNORE)
    if bool((targets != IGNORE).any()):
        losses["lm"] = lm_loss(out["lm_logits"][:, :-1], targets)

    has_text = b["text_valid"].any(1)
    lat_img, lat_txt = [], []
    if lay.n_img:
        rows = b["img_present"].any(1)
        if bool(rows.any()):
            mae = mae_loss(out["mae_pred"][rows].float(), normalize_patches(b["img"][rows]), b["mae_mask"][rows])
            vision = mae
            if int(rows.sum()) >= 2:
                z1 = pooled(out["img1_h"][rows], b["img_present"][rows]).float()
                z2 = pooled(out["img2_h"][rows], b["img_present"][rows]).float()
                vision = mae + VISION_CONTRASTIVE_WEIGHT * info_nce(z1, z2, INFO_NCE_TEMPERATURE)
            losses["vision"] = vision
        pair = rows & has_text
        lat_img.append(pooled(out["img_lat"][pair], b["img_present"][pair]))
        lat_txt.append(pooled(out["txt_lat"][pair], b["text_valid"][pair]))
    if lay.n_vid and "vid_lat" in out:
        pair = b["vid_present"].any(1) & has_text
        lat_img.append(pooled(out["vid_lat"][pair], b["vid_present"][pair]))
        lat_txt.append(pooled(out["txt_lat"][pair], b["text_valid"][pair]))
    if lat_img and "logit_scale" in out:
        zi, zt = torch.cat(lat_img).float(), torch.cat(lat_txt).float()
        if zi.shape[0] >= 2:
            losses["align"] = clip_loss(zi, zt, out["logit_scale"])

    if "world_pred" in out and world_target is not None:
        valid = world_pairs(b["vid_present"], cfg)
        if bool(valid.any()):
            tgt = world_targets(b["vid"], world_target.weight, cfg)
            losses["world"] = world_loss(out["world_pred"].float(), tgt[:, 1:], valid)

    if "act_v" in out:
        rows = b["step_present"].any(1)
        if bool(rows.any()):
            dims = b["act_dims"][rows][:, None, :].to(out["act_v"].dtype)  # (b, 1, A): real action dims
            losses["embod"] = flow_matching_loss(
                (out["act_v"][rows] * dims).float(), (b["act_v"][rows] * dims).float(), b["step_present"][rows]
            )
    return losses
