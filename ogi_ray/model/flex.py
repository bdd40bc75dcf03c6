"""Block-sparse attention for GPUs: the layout's segment mask, cut at packed-document
boundaries, as a FlexAttention ``BlockMask``, so that blocks of (query, key) slots that
are entirely masked are skipped instead of computed and thrown away.

    docs = slot_documents(txt, S, text_doc)   # (B, S) int: document per text slot, -1 elsewhere
    mask = block_mask(base, docs)             # base (S, S) bool → BlockMask over (B, any H, S, S)
    y = attend(q, k, v, mask)                 # q, k, v (B, H, S, hd) → (B, H, S, hd)

It keeps exactly the pairs ``Layout.row_mask`` keeps: ``base[q, kv]``, and inside the
text block only pairs of one document. On the shipped mixture's layout (448 slots) the
dense mask is 17 % true, so dense masked SDPA spends most of its work on masked pairs.

Which kernel a model uses is set from outside (``MultimodalTransformer.attention_kernel``,
chosen by ``parallel.device.attention_kernel``): FlexAttention on CUDA, where it is
compiled to block-sparse Triton kernels; dense masked SDPA on CPU, where torch 2.13 has no
FlexAttention backward and where bit-exact replay is checked. Eager ``flex_attention``
(forward only) serves the CPU test that the two agree.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

_COMPILED: Any = None


def slot_documents(txt: slice, seq_len: int, text_doc: torch.Tensor) -> torch.Tensor:
    """(B, S) int64: ``text_doc`` (B, T) at the text slots ``txt``, −1 at every other slot."""
    docs = torch.full((text_doc.shape[0], seq_len), -1, dtype=torch.long, device=text_doc.device)
    docs[:, txt] = text_doc.long()
    return docs


def block_mask(base: torch.Tensor, docs: torch.Tensor | None) -> BlockMask:
    """The BlockMask of ``base`` (S, S) bool, and with ``docs`` (B, S) of its rows' packed
    documents (a pair of text slots is kept only within one document)."""
    s = base.shape[0]
    if docs is None:

        def keep(b: Any, h: Any, q: Any, kv: Any) -> Any:
            return base[q, kv]

        return create_block_mask(keep, None, None, s, s, device=base.device)

    def keep_doc(b: Any, h: Any, q: Any, kv: Any) -> Any:
        dq, dk = docs[b, q], docs[b, kv]
        return base[q, kv] & ((dq < 0) | (dk < 0) | (dq == dk))

    return create_block_mask(keep_doc, docs.shape[0], None, s, s, device=base.device)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: BlockMask) -> torch.Tensor:
    """FlexAttention of q, k, v (B, H, S, hd) under ``mask``: compiled on CUDA (once per
    process), eager elsewhere (forward only: a reference, not a training path)."""
    global _COMPILED
    if q.is_cuda:
        if _COMPILED is None:
            _COMPILED = torch.compile(flex_attention, dynamic=False)
        return _COMPILED(q, k, v, block_mask=mask)
    return flex_attention(q, k, v, block_mask=mask)
