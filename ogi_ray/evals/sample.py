"""Sampling from a trained model: text continuations, nearest captions, action chunks.

Pure functions of (model, its ModelConfig, inputs, seed); no Ray, no files (the
``ogi sample`` command in ``sample_cli.py`` gathers inputs and prints results).

    text:    prompt ids in text slots 0..L−1 ─► logits at slot L−1 (forward.text_logits,
             text slots only) ─► temperature / top-k ─► id written at slot L ─► repeat
             until the token limit, EOS, a stop test, or the n_text slots are full
    caption: image ─► corpus patches ─► pooled align latent of the image view
             ─► cosine against each caption's pooled text latent ─► top k
    action:  embodied batch ─► x0 ~ N(0, I) (seeded) ─► Euler steps of the flow-matching
             velocity (t = 0 noise → t = 1 data, objectives.euler_sample) ─► (B, n_steps, act_dim)

Every random draw comes from a ``torch.Generator`` seeded by the caller, one per row, so
a row's draws do not depend on which other rows share its batch (its logits may still
differ in the last bits with the batch's size, so a benchmark fixes its batch size).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ogi_ray.corpus.config import PatchConfig
from ogi_ray.corpus.text_tokenizer import TextTokenizer
from ogi_ray.corpus.tokenize import image_patches
from ogi_ray.evals.forward import (
    backbone_on,
    model_batch,
    rows,
    slot_indices,
    text_batch,
    text_logits,
)
from ogi_ray.model.config import ModelConfig
from ogi_ray.model.objectives import euler_sample
from ogi_ray.train.losses import pooled


def pick_token(logits: torch.Tensor, temperature: float, top_k: int, gen: torch.Generator) -> int:
    """One id from logits (V,): argmax at temperature 0, else a draw from
    softmax(logits / T) restricted to the ``top_k`` largest (0 = all)."""
    if temperature <= 0:
        return int(torch.argmax(logits))  # the first maximum: ties are deterministic
    z = logits.float() / temperature
    if 0 < top_k < z.numel():
        kth = torch.topk(z, top_k).values[-1]
        z = z.masked_fill(z < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(z, -1), 1, generator=gen))


def generate(
    model: nn.Module, cfg: ModelConfig, prompts: Sequence[Sequence[int]], *, max_new: int,
    temperature: float, top_k: int, seeds: Sequence[int],
    stop: Callable[[list[int]], bool] | None = None, eos_id: int = -1,
) -> list[list[int]]:  # fmt: skip
    """The new ids of each prompt (prompt ids excluded); ``eos_id`` is the tokenizer's EOS.

    A prompt longer than ``n_text − max_new`` keeps its last tokens (the model has only
    n_text text slots). A row ends at ``max_new`` ids, at EOS (kept), when ``stop(ids)``
    says so, or when its slots are full."""
    if len(seeds) != len(prompts):
        raise ValueError(f"generate: {len(seeds)} seeds for {len(prompts)} prompts")
    room = max(1, cfg.n_text - max_new)
    ctx = [list(p)[-room:] for p in prompts]
    if any(not c for c in ctx):
        raise ValueError("generate: an empty prompt (give at least one token, e.g. EOS)")
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    batch = text_batch(cfg, ctx)  # (B, n_text) tokens, other segments absent
    lengths = [len(c) for c in ctx]
    new: list[list[int]] = [[] for _ in ctx]
    active = [i for i, n in enumerate(lengths) if n < cfg.n_text]
    while active:
        sub = {k: v[active] if v.dim() else v for k, v in batch.items()}
        logits = text_logits(model, cfg, sub, max(lengths[i] for i in active))  # (b, L, V)
        still = []
        for j, i in enumerate(active):
            tok = pick_token(logits[j, lengths[i] - 1], temperature, top_k, gens[i])
            batch["tokens"][i, lengths[i]] = tok
            batch["text_valid"][i, lengths[i]] = True
            lengths[i] += 1
            new[i].append(tok)
            done = tok == eos_id or len(new[i]) >= max_new or lengths[i] >= cfg.n_text
            if not (done or (stop is not None and stop(new[i]))):
                still.append(i)
        active = still
    return new


def continue_text(
    model: nn.Module, cfg: ModelConfig, tokenizer: TextTokenizer, prompt: str, *, max_tokens: int = 64,
    temperature: float = 0.8, top_k: int = 40, seed: int = 0,
) -> str:  # fmt: skip
    """The model's continuation of ``prompt`` as text ('' prompt: start after EOS)."""
    bpe = tokenizer
    ids = bpe.encode(prompt) if prompt else [bpe.eos_id]
    (out,) = generate(model, cfg, [ids], max_new=max_tokens, temperature=temperature, top_k=top_k, seeds=[seed],
                      eos_id=bpe.eos_id)  # fmt: skip
    return bpe.decode(out)  # the tokenizer's specials (EOS) are dropped


def image_latents(model: nn.Module, cfg: ModelConfig, images: Sequence[np.ndarray], patch_cfg: PatchConfig,
                  *, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(H, W, 3) uint8 images → (N, D) pooled backbone output and (N, D) align latents
    of the image view the align and InfoNCE objectives train (the ``img2`` slots)."""
    idx = slot_indices(cfg, {"img2": None})
    feats, lats = [], []
    for lo in range(0, len(images), batch_size):
        chunk = [image_patches(im, patch_cfg) for im in images[lo : lo + batch_size]]
        b = model_batch(rows(len(chunk), image_patches=chunk), cfg)
        h = backbone_on(model, model.embed(b), idx)  # (b, n_img, D)
        feats.append(pooled(h, b["img_present"]))
        lats.append(pooled(model.align_img(h), b["img_present"]))
    return torch.cat(feats), torch.cat(lats)


def text_latents(model: nn.Module, cfg: ModelConfig, token_lists: Sequence[Sequence[int]]) -> torch.Tensor:
    """Each text's pooled caption latent (N, D), as the align objective pools it."""
    b = text_batch(cfg, [list(t) for t in token_lists])
    h = backbone_on(model, model.embed(b), slot_indices(cfg, {"txt": None}), b.get("text_doc"))  # (N, n_text, D)
    return pooled(model.align_txt(h), b["text_valid"])


def nearest_captions(
    model: nn.Module, cfg: ModelConfig, tokenizer: TextTokenizer, image: np.ndarray, captions: Sequence[str],
    patch_cfg: PatchConfig, *, k: int = 5,
) -> list[tuple[str, float]]:  # fmt: skip
    """The ``k`` captions whose latents are nearest (cosine) to the image's."""
    if not captions:
        raise ValueError("nearest_captions: no candidate captions")
    bpe = tokenizer
    _, img = image_latents(model, cfg, [image], patch_cfg)
    txt = text_latents(model, cfg, [bpe.encode(c) + [bpe.eos_id] for c in captions])
    sims = (F.normalize(txt.float(), dim=-1) @ F.normalize(img.float(), dim=-1).T)[:, 0]  # (N,)
    order = torch.argsort(sims, descending=True, stable=True)[:k]
    return [(captions[i], float(sims[i])) for i in order.tolist()]


def sample_actions(model: nn.Module, batch: dict[str, torch.Tensor], *, seeds: Sequence[int],
                   steps: int = 10) -> torch.Tensor:  # fmt: skip
    """An action chunk (B, n_steps, act_dim) for the observations in ``batch`` (video,
    proprio; collated by train/data.collate), by ``steps`` Euler steps of the model's
    flow-matching velocity from Gaussian noise, row i's noise from seed ``seeds[i]``.
    Padded dims and steps are zeroed."""
    shape = batch["act"].shape[1:]  # (n_steps, act_dim)
    if len(seeds) != batch["act"].shape[0]:
        raise ValueError(f"sample_actions: {len(seeds)} seeds for {batch['act'].shape[0]} rows")
    x0 = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    cfg = model.cfg
    # Actions attend to video, states and actions only: run those slots (the act slots last).
    idx = slot_indices(cfg, {k: None for k in ("vid", "prop", "act") if cfg.layout.sizes()[k]})

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = backbone_on(model, model.embed({**batch, "act_xt": x, "flow_t": t}), idx)
        return model.embod_head(h[:, -cfg.n_steps :])  # (B, n_steps, act_dim), as heads()' act_v

    x = euler_sample(velocity, x0, steps=steps)
    return x * batch["act_dims"][:, None, :] * batch["step_present"][..., None]
