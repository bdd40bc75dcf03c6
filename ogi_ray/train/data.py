"""From corpus rows (Ray Data numpy batches or Parquet tables) to model tensors.

Binary columns are decoded (layouts in docs/corpus.md) and placed in the model's fixed
slots (model/layout.py); longer inputs are truncated to the slots, shorter ones padded
and marked absent. Per-step randomness (MAE mask, second view, flow-matching time and
noise) is drawn here from a generator seeded by (seed, step, rank), so a replay of the
same step sees exactly the same batch tensors.

    text_tokens  int32 LE          ─► tokens (B, T) (unfilled slots: the tokenizer's PAD),
                                      text_valid (B, T)
    text_doc_lens int32 LE         ─► text_doc (B, T): document index per text slot, for
                                      the block-diagonal attention of packed rows
    image_patches uint8            ─► img, img2 (augmented view) (B, n_img, img_dim) in [0, 1],
                                      img_present (B, n_img), mae_mask (B, n_img)
    video_tubelets uint8           ─► vid (B, n_vid, vid_dim), vid_present
    audio_frames float32           ─► aud (B, n_aud, aud_dim), aud_present
    proprio/action float32 (T×dim) ─► prop (B, n_steps, prop_dim), act (B, n_steps, act_dim),
                                      act_dims (B, act_dim), step_present (B, n_steps),
                                      flow_t (B,), act_xt, act_v (flow-matching pair)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ogi_ray.model.config import ModelConfig
from ogi_ray.model.objectives import augment_patches, flow_matching_pair, mae_mask, sample_t

COLUMNS = [
    "source", "position", "text_tokens", "text_doc_lens", "image_patches", "video_tubelets", "audio_frames",
    "proprio", "action", "proprio_dim", "action_dim", "tokens_text", "tokens_image",
    "tokens_video", "tokens_audio", "tokens_proprio", "tokens_action",
]  # fmt: skip


def _fill(rows: list[np.ndarray], n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length (k_i, dim_i) arrays → (B, n, dim) zero-padded + (B, n) presence."""
    out = np.zeros((len(rows), n, dim), np.float32)
    present = np.zeros((len(rows), n), bool)
    for i, r in enumerate(rows):
        k, d = min(len(r), n), min(r.shape[1] if r.ndim == 2 else 0, dim)
        if k and d:
            out[i, :k, :d] = r[:k, :d]
            present[i, :k] = True
    return out, present


def _decode(blob: Any, dtype: str, dim: int) -> np.ndarray:
    if blob is None or len(blob) == 0 or dim <= 0:
        return np.zeros((0, max(dim, 1)), dtype)
    return np.frombuffer(blob, dtype=dtype).reshape(-1, dim)


def document_ids(doc_lens: bytes | None, n_ids: int, t: int) -> np.ndarray:
    """(t,) int64: the document index of each of a row's ``t`` text slots.

    ``doc_lens`` are the row's int32 LE document lengths (summing to its token count;
    empty for a row that is one document). Slots past the row's ``n_ids`` tokens, and
    tokens the slots cut off, are padding: they get one index past the last document.
    """
    lens = np.frombuffer(doc_lens or b"", dtype="<i4")
    ids = np.repeat(np.arange(len(lens), dtype=np.int64), lens)[:n_ids]
    if len(ids) < n_ids:  # no (or short) boundaries recorded: the rest is one document
        ids = np.concatenate([ids, np.full(n_ids - len(ids), len(lens), np.int64)])
    pad = (ids[-1] + 1) if n_ids else 0
    return np.concatenate([ids, np.full(t - n_ids, pad, np.int64)])


def seeded_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


def collate(batch: dict[str, Any], cfg: ModelConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    b = len(batch["text_tokens"])
    lay = cfg.layout
    t = lay.n_text
    tokens = np.full((b, t), cfg.pad_id, np.int64)
    text_valid = np.zeros((b, t), bool)
    text_doc = np.zeros((b, t), np.int64)
    for i in range(b):
        ids = np.frombuffer(batch["text_tokens"][i], dtype="<i4")[:t]
        tokens[i, : len(ids)] = ids
        text_valid[i, : len(ids)] = True
        text_doc[i] = document_ids(batch["text_doc_lens"][i], len(ids), t)
    out: dict[str, torch.Tensor] = {
        "tokens": torch.from_numpy(tokens), "text_valid": torch.from_numpy(text_valid),
        "text_doc": torch.from_numpy(text_doc), "n_tokens": torch.tensor(int(text_valid.sum())),
    }  # fmt: skip
    if lay.n_img:
        img, present = _fill([_decode(x, "u1", cfg.img_dim) for x in batch["image_patches"]], lay.n_img, cfg.img_dim)
        img_t = torch.from_numpy(img) / 255.0
        out["img"], out["img_present"] = img_t, torch.from_numpy(present)
        out["img2"] = augment_patches(img_t, gen)  # second view for InfoNCE and align
        out["mae_mask"] = mae_mask(b, lay.n_img, cfg.mask_ratio, gen) & out["img_present"]
    if lay.n_vid:
        vid, present = _fill([_decode(x, "u1", cfg.vid_dim) for x in batch["video_tubelets"]], lay.n_vid, cfg.vid_dim)
        out["vid"], out["vid_present"] = torch.from_numpy(vid) / 255.0, torch.from_numpy(present)
    if lay.n_aud:
        aud, present = _fill([_decode(x, "<f4", cfg.aud_dim) for x in batch["audio_frames"]], lay.n_aud, cfg.aud_dim)
        out["aud"], out["aud_present"] = torch.from_numpy(aud), torch.from_numpy(present)
    if lay.n_steps:
        prop_rows = [_decode(x, "<f4", int(d)) for x, d in zip(batch["proprio"], batch["proprio_dim"], strict=True)]
        act_rows = [_decode(x, "<f4", int(d)) for x, d in zip(batch["action"], batch["action_dim"], strict=True)]
        for r in act_rows + prop_rows:
            if r.shape[1] > max(cfg.act_dim, cfg.prop_dim):
                raise ValueError(f"proprio/action width {r.shape[1]} exceeds the model's {cfg.act_dim}")
        prop, _ = _fill(prop_rows, lay.n_steps, cfg.prop_dim)
        act, step_present = _fill(act_rows, lay.n_steps, cfg.act_dim)
        act_dims = np.zeros((b, cfg.act_dim), bool)
        for i, r in enumerate(act_rows):
            act_dims[i, : r.shape[1] if len(r) else 0] = True
        x1 = torch.from_numpy(act)  # (B, n_steps, act_dim) clean action chunk
        ft = sample_t(b, gen)  # (B,)
        noise = torch.randn(x1.shape, generator=gen)
        xt, v = flow_matching_pair(x1, noise, ft)
        out.update(prop=torch.from_numpy(prop), act=x1, act_dims=torch.from_numpy(act_dims),
                   step_present=torch.from_numpy(step_present), flow_t=ft, act_xt=xt, act_v=v)  # fmt: skip
    return out


def collate_step(rows: list[dict[str, Any]], cfg: ModelConfig, seed: int, step: int, dp_rank: int) -> list[dict[str, torch.Tensor]]:
    """One step's micro-batches of one dp rank: every draw from the step's generator, in
    micro-batch order (the worker and the replay both call this)."""
    gen = seeded_generator(seed, step, dp_rank)
    return [collate(r, cfg, gen) for r in rows]


def read_heldout(paths: list[str], rows_per_source: int) -> dict[str, dict[str, Any]]:
    """Held-out rows grouped by source, at most ``rows_per_source`` each (first rows)."""
    import pyarrow.parquet as pq

    out: dict[str, dict[str, list]] = {}
    for path in paths:
        t = pq.read_table(path, columns=COLUMNS).to_pydict()
        for i, src in enumerate(t["source"]):
            d = out.setdefault(src, {c: [] for c in COLUMNS})
            if len(d["source"]) < rows_per_source:
                for c in COLUMNS:
                    d[c].append(t[c][i])
    return out
