"""Packed text rows: document ids from ``text_doc_lens`` and the block-diagonal attention
they give, so that no document sees another's tokens (corpus/tokenize.py packs them)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ogi_ray.model import build, preset
from ogi_ray.train.data import collate, document_ids


def _lens(*n: int) -> bytes:
    return np.asarray(n, "<i4").tobytes()


def test_document_ids_follow_the_lengths_and_padding_gets_its_own_block():
    assert document_ids(_lens(3, 2), 5, 8).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    # The slots cut the second document: what is left of it is still document 1.
    assert document_ids(_lens(3, 4), 5, 5).tolist() == [0, 0, 0, 1, 1]
    # No boundaries recorded (a row that is one document): one block, then padding.
    assert document_ids(b"", 3, 5).tolist() == [0, 0, 0, 1, 1]
    assert document_ids(b"", 0, 3).tolist() == [0, 0, 0]


def test_row_mask_cuts_only_the_text_block():
    cfg = preset("tiny", vocab_size=64, n_text=6, n_img=2)
    lay = cfg.layout
    base = lay.mask()
    doc = torch.tensor([[0, 0, 1, 1, 1, 2], [0] * 6])
    m = lay.row_mask(base, doc)
    assert m.shape == (2, 1, lay.seq_len, lay.seq_len)
    t = lay.slices()["txt"]
    txt = m[0, 0, t, t].int().tolist()
    assert txt == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0],
                   [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]]  # fmt: skip
    assert torch.equal(m[1, 0], base)  # one document: the layout's causal mask
    outside = torch.ones_like(base)
    outside[t, t] = False
    assert torch.equal(m[0, 0][outside], base[outside])


def _batch(cfg, rows: list[tuple[list[int], list[int]]]):
    """Collate real-shaped rows: (token ids, document lengths)."""
    cols = {"text_tokens": [np.asarray(ids, "<i4").tobytes() for ids, _ in rows],
            "text_doc_lens": [_lens(*lens) for _, lens in rows]}  # fmt: skip
    return collate(cols, cfg, torch.Generator().manual_seed(0))


def test_a_packed_document_sees_nothing_of_its_neighbour():
    cfg = replace(preset("tiny", vocab_size=64, n_text=12), pad_id=63)
    model = build(cfg, seed=3).eval()
    doc2 = [7, 8, 9, 10, 2]  # ends with the tokenizer's EOS (here id 2)
    a = _batch(cfg, [([11, 12, 13, 2] + doc2, [4, 5])])
    b = _batch(cfg, [([40, 41, 42, 2] + doc2, [4, 5])])  # another first document
    alone = _batch(cfg, [(doc2, [5])])
    assert a["tokens"][0, 9:].tolist() == [63, 63, 63]  # the tokenizer's PAD, not id 0
    with torch.no_grad():
        la, lb, l1 = (model(x)[1]["lm_logits"][0] for x in (a, b, alone))
    # The second document's logits do not depend on the first one ...
    assert torch.equal(la[4:9], lb[4:9])
    # ... and equal the document on its own (RoPE: only relative positions count).
    torch.testing.assert_close(la[4:9], l1[:5], rtol=1e-5, atol=1e-5)
    # Without the boundaries the first document leaks into the second.
    a["text_doc"].zero_()
    with torch.no_grad():
        leak = model(a)[1]["lm_logits"][0]
    assert not torch.allclose(leak[4:9], lb[4:9], atol=1e-3)
