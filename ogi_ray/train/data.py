"""From corpus rows (Ray Data numpy batches or Parquet tables) to model tensors.

    text_tokens (bytes, int32 LE)  ─► tokens  (B, T) int64, PAD-filled
                                     targets (B, T) int64, IGNORE where padded
    image_patches (bytes, uint8)   ─► patches (B, P, 3·p·p) float32 in [0, 1]
                                     has_image (B,) bool
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ogi_ray.model.objectives import IGNORE

COLUMNS = ["source", "text_tokens", "image_patches", "tokens_image", "tokens_text"]
PAD_ID = 0


def collate(batch: dict[str, Any], seq_len: int, n_patches: int, patch_dim: int) -> dict[str, torch.Tensor]:
    b = len(batch["text_tokens"])
    tokens = np.full((b, seq_len), PAD_ID, np.int64)
    targets = np.full((b, seq_len), IGNORE, np.int64)
    patches = np.zeros((b, n_patches, patch_dim), np.float32)
    has_image = np.zeros(b, bool)
    for i in range(b):
        ids = np.frombuffer(batch["text_tokens"][i], dtype="<i4")[:seq_len]
        tokens[i, : len(ids)] = ids
        targets[i, : len(ids)] = ids
        if batch["tokens_image"][i]:
            img = np.frombuffer(batch["image_patches"][i], np.uint8).reshape(-1, patch_dim)
            patches[i, : len(img)] = img[:n_patches] / 255.0
            has_image[i] = True
    return {
        "tokens": torch.from_numpy(tokens),
        "targets": torch.from_numpy(targets),
        "patches": torch.from_numpy(patches),
        "has_image": torch.from_numpy(has_image),
        "n_tokens": torch.tensor(int((targets != IGNORE).sum())),
    }


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
