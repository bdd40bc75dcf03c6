"""The fixed token layout of one row, and the attention mask over it.

Every row is laid out in the same slots, so that shapes are static (pipeline stages and
compiled kernels need that) and one (S, S) mask serves the whole batch:

    segment   slots        attends to                       feeds
    img       n_img        img (bidirectional)              vision: MAE on masked patches
    img2      n_img        img2 (bidirectional)             vision: InfoNCE view 2; align
    vid       n_vid        vid of the same or earlier       world: next-chunk latent
                           time chunk (block-causal)        align (video ↔ caption)
    aud       n_aud        aud (bidirectional)              context only
    prop      n_steps      vid, prop                        embod: observation state
    act       n_steps      vid, prop, act                   embod: flow-matching velocity
    txt       n_text       txt (causal)                     lm; align (caption latent)

Text is packed (corpus/tokenize.py): one row's text slots may hold several documents,
joined with their EOS. ``Layout.row_mask`` cuts the causal text block along the row's
document ids (``text_doc`` (B, T), from ``text_doc_lens``) so that no token attends to
another document's tokens: a block-diagonal causal mask, one (S, S) per row.

Text never attends to images or video: the caption latent used by the contrastive
alignment would otherwise already contain the image (a leak), so cross-modal coupling
comes from ``align`` alone. Segments whose modality the corpus lacks get zero slots.
A slot a row does not fill holds a learned "absent" embedding of its segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the planner imports layouts without paying for torch
    import torch

SEGMENTS = ("img", "img2", "vid", "aud", "prop", "act", "txt")
_ATTENDS = {
    "img": ("img",),
    "img2": ("img2",),
    "vid": ("vid",),
    "aud": ("aud",),
    "prop": ("vid", "prop"),
    "act": ("vid", "prop", "act"),
    "txt": ("txt",),
}


@dataclass(frozen=True)
class Layout:
    n_img: int = 0
    n_vid: int = 0
    vid_group: int = 1  # tubelets per time chunk (the (size/patch)² grid)
    n_aud: int = 0
    n_steps: int = 0
    n_text: int = 128

    def sizes(self) -> dict[str, int]:
        return {"img": self.n_img, "img2": self.n_img, "vid": self.n_vid, "aud": self.n_aud,
                "prop": self.n_steps, "act": self.n_steps, "txt": self.n_text}  # fmt: skip

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, n in self.sizes().items():
            out[name] = slice(start, start + n)
            start += n
        return out

    @property
    def seq_len(self) -> int:
        return sum(self.sizes().values())

    @property
    def n_chunks(self) -> int:
        return self.n_vid // self.vid_group if self.n_vid else 0

    def mask(self) -> torch.Tensor:
        """(S, S) bool, True where query (row) may attend to key (column)."""
        import torch

        s = self.seq_len
        m = torch.zeros(s, s, dtype=torch.bool)
        sl = self.slices()
        for q, keys in _ATTENDS.items():
            for k in keys:
                m[sl[q], sl[k]] = True
        t = sl["txt"]
        m[t, t] = torch.tril(torch.ones(self.n_text, self.n_text, dtype=torch.bool))
        if self.n_vid:
            v = sl["vid"]
            chunk = torch.arange(self.n_vid) // self.vid_group
            m[v, v] = chunk[:, None] >= chunk[None, :]
        # Every row must attend to something (itself): softmax over an empty set is NaN.
        m |= torch.eye(s, dtype=torch.bool)
        return m

    def row_mask(self, base: torch.Tensor, text_doc: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) bool: ``base`` (S, S) with text cut at document boundaries.

        text_doc (B, T) int: the document index of each text slot (padding slots get an
        index of their own). A query in the text block keeps only keys of its document.
        """
        t = self.slices()["txt"]
        b, s = text_doc.shape[0], self.seq_len
        m = base.expand(b, 1, s, s).clone()
        same = text_doc[:, :, None] == text_doc[:, None, :]  # (B, T, T)
        m[:, 0, t, t] &= same
        return m
