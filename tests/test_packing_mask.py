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


def test_flex_block_mask_keeps_the_same_pairs_as_the_dense_row_mask():
    """The GPU kernel (FlexAttention over a BlockMask, model/flex.py) sees exactly what
    dense masked SDPA sees: same backbone output on a multimodal layout with two packed
    documents, run here with eager flex_attention (forward only on CPU)."""
    cfg = preset("tiny", vocab_size=64, n_text=40, n_img=4)
    model = build(cfg, seed=5).eval()
    lay = cfg.layout
    doc = torch.tensor([[0] * 15 + [1] * 20 + [2] * 5, [0] * 40])  # (B, T): two rows
    x = torch.randn(2, lay.seq_len, cfg.dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = model.backbone(x, model.attention_mask(doc))
        model.attention_kernel = "flex"
        sparse_mask = model.attention_mask(doc)
        sparse = model.backbone(x, sparse_mask)
    assert type(sparse_mask).__name__ == "BlockMask"
    assert torch.allclose(dense, sparse, atol=1e-5, rtol=1e-5), (dense - sparse).abs().max()
    # Cross-document pairs differ from the layout alone: the documents did cut the mask.
    with torch.no_grad():
        uncut = model.backbone(x, model.attention_mask(None))
    assert not torch.allclose(uncut[0], sparse[0], atol=1e-3)
    assert torch.allclose(uncut[1], sparse[1], atol=1e-5)  # row 2 is one document
