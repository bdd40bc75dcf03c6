"""A plain PyTorch multimodal transformer: embedders → shared backbone → heads.

No Ray and no torch.distributed here: parallelism (FSDP2, TP, PP) is applied from
outside by ``ogi_ray.parallel``; that is why attention and MLP keep separate
``wq/wk/wv/wo`` and ``w1/w2/w3`` linears (column/row-parallel split points) and the
backbone is a ModuleList of identical blocks (pipeline split points).

Data flow (shapes for B rows; S = the layout's total slots, see model/layout.py):

    batch tensors ─► embed: one Linear/Embedding per modality, segment + "absent"
                     embeddings ─► x (B, S, D)
    ─► L pre-norm blocks (RMSNorm, SDPA with rotary positions under the layout's
       segment mask, SwiGLU) ─► h (B, S, D): the shared representation
    ─► heads: lm logits, MAE pixels, alignment latents, world next-chunk prediction,
       flow-matching velocity (per slot; the losses in train/losses.py pool and mask)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ogi_ray.model import flex
from ogi_ray.model.config import ModelConfig
from ogi_ray.model.flex import BlockMask


def rotary_tables(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (seq_len, head_dim/2)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    ang = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv)
    return ang.cos(), ang.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, S, hd) rotated pairwise by position; cos/sin (S, hd/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, None].to(x.dtype), sin[None, None].to(x.dtype)
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | BlockMask
    ) -> torch.Tensor:
        b, s, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds n_heads/tp of them.
        q = self.wq(x).view(b, s, -1, self.head_dim).transpose(1, 2)  # (B, H, S, hd)
        k = self.wk(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if isinstance(mask, BlockMask):  # block-sparse (model/flex.py)
            y = flex.attend(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, S, hd), fused
        return self.wo(y.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | BlockMask
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        return x + self.mlp(self.mlp_norm(x))


class MultimodalTransformer(nn.Module):
    # "sdpa": dense masked scaled_dot_product_attention; "flex": a FlexAttention BlockMask
    # that skips fully masked blocks. Set from outside (parallel.device.attention_kernel).
    attention_kernel: str = "sdpa"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        lay = cfg.layout
        d = cfg.dim
        self.tok_embed = nn.Embedding(cfg.vocab_size, d)
        # One embedder per modality (absent segments get no parameters).
        self.img_embed = nn.Linear(cfg.img_dim, d) if lay.n_img else None
        self.vid_embed = nn.Linear(cfg.vid_dim, d) if lay.n_vid else None
        self.aud_embed = nn.Linear(cfg.aud_dim, d) if lay.n_aud else None
        self.prop_embed = nn.Linear(cfg.prop_dim, d) if lay.n_steps else None
        self.act_embed = nn.Linear(cfg.act_dim, d) if lay.n_steps else None
        self.time_embed = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d)) if lay.n_steps else None
        sizes = lay.sizes()
        # Per segment: a learned type embedding (added to every slot) and an "absent"
        # embedding (replaces slots a row does not fill); MAE's mask token for img.
        self.seg_embed = nn.ParameterDict({k: nn.Parameter(torch.zeros(d)) for k, n in sizes.items() if n})
        # (Text slots are always filled: padding is a token, so "txt" has no absent embedding.)
        self.absent = nn.ParameterDict({k: nn.Parameter(torch.zeros(d)) for k, n in sizes.items() if n and k != "txt"})
        self.mask_token = nn.Parameter(torch.zeros(d)) if lay.n_img else None
        self.null_action = nn.Parameter(torch.zeros(d)) if lay.n_chunks >= 2 else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(d, eps=cfg.norm_eps)
        # Heads, one per objective.
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.mae_head = nn.Linear(d, cfg.img_dim) if lay.n_img else None
        self.align_img = nn.Linear(d, d, bias=False) if (lay.n_img or lay.n_vid) else None
        self.align_txt = nn.Linear(d, d, bias=False) if (lay.n_img or lay.n_vid) else None
        # CLIP's learnable log inverse temperature; 1-D because FSDP2 shards no scalars.
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07))) if (lay.n_img or lay.n_vid) else None
        self.world_head = nn.Linear(d, d) if lay.n_chunks >= 2 else None
        self.embod_head = nn.Linear(d, cfg.act_dim) if lay.n_steps else None
        self.register_buffer("rope_cos", torch.empty(lay.seq_len, cfg.head_dim // 2), persistent=False)
        self.register_buffer("rope_sin", torch.empty(lay.seq_len, cfg.head_dim // 2), persistent=False)
        self.register_buffer("attn_mask", torch.empty(lay.seq_len, lay.seq_len, dtype=torch.bool), persistent=False)
        self.init_buffers()

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Recompute the constant buffers (rotary tables, layout mask) in place: after
        ``to_empty`` on a model built on the meta device they hold garbage."""
        if self.rope_cos.is_meta:
            return
        lay = self.cfg.layout
        cos, sin = rotary_tables(lay.seq_len, self.cfg.head_dim, self.cfg.rope_theta)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        self.attn_mask.copy_(lay.mask())

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Every parameter from ``initial_value`` (a no-op on the meta device, where
        ``parallel.materialize`` fills each rank's shard from the same rule instead)."""
        for name, p in self.named_parameters():
            if not p.is_meta:
                p.copy_(initial_value(self.cfg, name, tuple(p.shape), seed))

    def _segment(self, name: str, x: torch.Tensor | None, present: torch.Tensor | None) -> torch.Tensor:
        """x (B, n, D) embedded slots or None; present (B, n) bool → (B, n, D)."""
        out = torch.where(present[..., None], x, self.absent[name].to(x.dtype)) if present is not None else x
        return out + self.seg_embed[name].to(out.dtype)

    def embed(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """Batch tensors (see ogi_ray/train/data.py) → x (B, S, D) in layout order."""
        lay = self.cfg.layout
        parts = []
        if lay.n_img:
            img = self.img_embed(b["img"])  # (B, n_img, D)
            masked = torch.where(b["mae_mask"][..., None], self.mask_token.to(img.dtype), img)
            parts.append(self._segment("img", masked, b["img_present"]))
            parts.append(self._segment("img2", self.img_embed(b["img2"]), b["img_present"]))
        if lay.n_vid:
            parts.append(self._segment("vid", self.vid_embed(b["vid"]), b["vid_present"]))
        if lay.n_aud:
            parts.append(self._segment("aud", self.aud_embed(b["aud"]), b["aud_present"]))
        if lay.n_steps:
            parts.append(self._segment("prop", self.prop_embed(b["prop"]), b["step_present"]))
            # Flow-matching input: noisy action x_t plus the embedding of its time t.
            t_emb = self.time_embed(timestep_embedding(b["flow_t"], self.cfg.dim))  # (B, D)
            act = self.act_embed(b["act_xt"]) + t_emb[:, None].to(self.act_embed.weight.dtype)
            parts.append(self._segment("act", act, b["step_present"]))
        parts.append(self._segment("txt", self.tok_embed(b["tokens"]), None))
        return torch.cat(parts, dim=1)

    def attention_mask(self, text_doc: torch.Tensor | None) -> torch.Tensor | BlockMask:
        """The layout mask (S, S), or per row (B, 1, S, S) with text cut at document
        boundaries when ``text_doc`` (B, T) is given (layout.Layout.row_mask); under the
        "flex" kernel the same pairs as a BlockMask."""
        if self.attention_kernel == "flex":
            lay = self.cfg.layout
            docs = None if text_doc is None else flex.slot_documents(lay.slices()["txt"], lay.seq_len, text_doc)
            return flex.block_mask(self.attn_mask, docs)
        if text_doc is None:
            return self.attn_mask
        return self.cfg.layout.row_mask(self.attn_mask, text_doc)

    def backbone(self, x: torch.Tensor, mask: torch.Tensor | BlockMask | None = None) -> torch.Tensor:
        """x (B, S, D) → h (B, S, D): the shared representation the objectives read."""
        mask = self.attention_mask(None) if mask is None else mask
        for layer in self.layers:
            x = layer(x, self.rope_cos, self.rope_sin, mask)
        return self.norm(x)

    def heads(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-slot outputs of every head present; losses pool and mask them."""
        sl = self.cfg.layout.slices()
        out = {"lm_logits": self.lm_head(h[:, sl["txt"]])}  # (B, T, V): slot t predicts t+1
        if self.mae_head is not None:
            out["mae_pred"] = self.mae_head(h[:, sl["img"]])  # (B, n_img, img_dim)
        if self.align_img is not None:
            # Returned from forward so the losses see it while FSDP has it unsharded.
            out["logit_scale"] = self.logit_scale.sum()  # a new tensor, not a view of the param
            out["txt_lat"] = self.align_txt(h[:, sl["txt"]])  # (B, T, D)
            if self.cfg.n_img:
                out["img_lat"] = self.align_img(h[:, sl["img2"]])  # (B, n_img, D)
                out["img1_h"] = h[:, sl["img"]]
                out["img2_h"] = h[:, sl["img2"]]
            if self.cfg.n_vid:
                out["vid_lat"] = self.align_img(h[:, sl["vid"]])  # (B, n_vid, D)
        if self.world_head is not None:
            lay = self.cfg.layout
            chunks = h[:, sl["vid"]].unflatten(1, (lay.n_chunks, lay.vid_group)).mean(2)  # (B, C, D)
            # Predict chunk c+1 from chunk c, conditioned on the learned null action.
            out["world_pred"] = self.world_head(chunks[:, :-1] + self.null_action.to(chunks.dtype))
        if self.embod_head is not None:
            out["act_v"] = self.embod_head(h[:, sl["act"]])  # (B, n_steps, act_dim)
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.backbone(self.embed(batch), self.attention_mask(batch.get("text_doc")))
        return h, self.heads(h)

    def num_params(self, include_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not include_embeddings:
            n -= self.tok_embed.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6·N (non-embedding) + 12·L·D·S for attention (PaLM)."""
        s = seq_len or self.cfg.max_seq_len
        return 6 * self.num_params(include_embeddings=False) + 12 * self.cfg.n_layers * self.cfg.dim * s


def tensor_seed(seed: int, name: str) -> int:
    """The generator seed of one parameter: a function of (seed, name) only, so every
    rank, stage and layout draws the same initial values for it."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}|{name}".encode()).digest()[:8], "little")


def initial_value(cfg: ModelConfig, name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The full initial value (float32, CPU) of parameter ``name``: N(0, 0.02) matrices,
    the residual output projections (wo, w2) scaled by 1/sqrt(2·L) (GPT-2 / torchtitan
    practice), zero biases, unit norm weights, N(0, 0.02) segment/absent/mask/null
    embeddings, and CLIP's log inverse temperature log(1/0.07)."""
    gen = torch.Generator().manual_seed(tensor_seed(seed, name))
    if name == "logit_scale":
        return torch.full(shape, math.log(1 / 0.07))
    if len(shape) >= 2 or name.startswith(("seg_embed", "absent", "mask_token", "null_action")):
        scale = 1 / math.sqrt(2 * cfg.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 1.0
        return torch.randn(shape, generator=gen) * (0.02 * scale)
    if name.endswith("bias"):
        return torch.zeros(shape)
    return torch.ones(shape)  # RMSNorm weights


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t (B,) in [0, 1] → (B, dim) sinusoidal features (as in diffusion models)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([ang.cos(), ang.sin()], dim=-1)
