"""Model inputs for evals, and a forward pass over a subset of the layout's slots.

    corpus-format rows (the Parquet columns of docs/corpus.md, built by ``rows``)
      ─► train/data.collate (the trainer's own decoding and slot filling)
      ─► ``clean``: the eval view (no MAE mask, second image view = the image itself)
      ─► model.embed ─► x (B, S, D) ─► ``backbone_on(model, x, idx)`` ─► h (B, k, D)

Every row is laid out in all S slots of the fixed layout (model/layout.py), but an eval
usually reads one segment: text for HumanEval, the second image view for digits. Those
segments attend only to themselves (text causally), so their outputs are the same
function of their own slots whether or not the other slots are computed. ``backbone_on``
runs the model's own blocks on the chosen slot indices with the matching rows of the
rotary tables and mask, after checking that no chosen slot attends outside the choice:
2-4x cheaper than the full layout for text, more for images, and for causal text a
prefix of the segment is enough (generation only computes the tokens written so far).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ogi_ray.model.config import ModelConfig
from ogi_ray.train.data import COLUMNS, collate

EVAL_SEED = 0  # collate's generator: only feeds randomness that ``clean`` then overrides


def rows(n: int, **columns: list[Any]) -> dict[str, list[Any]]:
    """``n`` corpus-format rows: the given columns, every other one empty.

    Arrays (bytes pass through) are written as the corpus stores them (int32/float32 little-endian bytes,
    uint8 patches), so ``collate`` decodes them exactly as it decodes shard rows."""
    out: dict[str, list[Any]] = {c: [0 if c.endswith("_dim") or c.startswith("tokens_") or c == "position"
                                     else b"" for _ in range(n)] for c in COLUMNS}  # fmt: skip
    out["source"] = ["eval"] * n
    dtypes = {"text_tokens": "<i4", "image_patches": "u1", "video_tubelets": "u1", "audio_frames": "<f4",
              "proprio": "<f4", "action": "<f4"}  # fmt: skip
    for name, values in columns.items():
        if name not in COLUMNS:
            raise KeyError(f"rows: unknown column {name!r}")
        if len(values) != n:
            raise ValueError(f"rows: column {name!r} has {len(values)} values for {n} rows")
        if name in dtypes:
            values = [v if isinstance(v, bytes) else np.ascontiguousarray(v, dtypes[name]).tobytes() for v in values]
        out[name] = list(values)
    return out


def clean(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The unperturbed view of a collated batch: no patch masked, and the second image
    view (which training augments) equal to the image."""
    b = dict(batch)
    if "img" in b:
        b["img2"] = b["img"]
        b["mae_mask"] = torch.zeros_like(b["mae_mask"])
    return b


def model_batch(columns: dict[str, list[Any]], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    return clean(collate(columns, cfg, torch.Generator().manual_seed(EVAL_SEED)))


def slot_indices(cfg: ModelConfig, segments: dict[str, int | None]) -> torch.Tensor:
    """Slot indices of ``segments`` (name → how many of its first slots; None = all)."""
    sl = cfg.layout.slices()
    parts = []
    for name, n in segments.items():
        s = sl[name]
        stop = s.stop if n is None else s.start + n
        if not s.start < stop <= s.stop:
            raise ValueError(f"segment {name!r}: {n} slots requested, the layout has {s.stop - s.start}")
        parts.append(torch.arange(s.start, stop))
    return torch.cat(parts)


def backbone_on(model: nn.Module, x: torch.Tensor, idx: torch.Tensor,
                text_doc: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """x (B, S, D) embedded slots, idx (k,) slot indices closed under attention → h (B, k, D).

    The model's blocks and final norm, with its rotary tables and mask restricted to
    ``idx`` (what ``MultimodalTransformer.backbone`` does on all S slots); ``text_doc``
    (B, T), the batch's document ids, cuts text attention at document boundaries as the
    full forward does."""
    mask = model.attn_mask
    keep = torch.zeros(mask.shape[0], dtype=torch.bool)
    keep[idx] = True
    if bool(mask[idx][:, ~keep].any()):
        raise ValueError("backbone_on: a chosen slot attends to a slot outside the choice")
    full = model.attention_mask(text_doc)  # (S, S) or (B, 1, S, S)
    cos, sin, m = model.rope_cos[idx], model.rope_sin[idx], full[..., idx, :][..., idx]
    h = x[:, idx]
    for layer in model.layers:
        h = layer(h, cos, sin, m)
    return model.norm(h)


def text_batch(cfg: ModelConfig, token_lists: list[list[int]]) -> dict[str, torch.Tensor]:
    """A batch holding only text: each list in the first text slots (at most n_text)."""
    return model_batch(rows(len(token_lists), text_tokens=[np.asarray(t[: cfg.n_text]) for t in token_lists]), cfg)


def text_logits(model: nn.Module, cfg: ModelConfig, batch: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """Next-token logits (B, n, V) of the first ``n`` text slots of ``batch``.

    Text attends only to earlier text, so these equal the full layout's logits at those
    slots (tests/test_evals_units.py checks it); the embedding is the model's own."""
    h = backbone_on(model, model.embed(batch), slot_indices(cfg, {"txt": n}), batch.get("text_doc"))
    return model.lm_head(h)
