"""A plain PyTorch multimodal transformer: embedders → shared backbone → heads.

No Ray and no torch.distributed here: parallelism (FSDP2, TP, PP) is applied from
outside by ``ogi_ray.parallel``; that is why attention and MLP keep separate
``wq/wk/wv/wo`` and ``w1/w2/w3`` linears (column/row-parallel split points) and the
backbone is a ModuleList of identical blocks (pipeline split points).

Input layout of one row (B rows per batch):

    [ image patch embeddings (B, P, D) | text token embeddings (B, T, D) ]
      rows without an image use a learned "no image" embedding in the P slots
    ─► L pre-norm blocks (RMSNorm, causal SDPA with rotary positions, SwiGLU)
    ─► h (B, P+T, D): the shared representation the objectives read
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ogi_ray.model.config import ModelConfig


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

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds n_heads/tp of them.
        q = self.wq(x).view(b, s, -1, self.head_dim).transpose(1, 2)  # (B, H, S, hd)
        k = self.wk(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # fused kernel
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

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class MultimodalTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.patch_embed = nn.Linear(cfg.image_patch_dim, cfg.dim)
        self.no_image = nn.Parameter(torch.zeros(cfg.image_patches, cfg.dim))
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rotary_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                # Residual output projections scaled by depth (GPT-2 / torchtitan practice).
                scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 1.0
                nn.init.normal_(p, 0.0, std * scale)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        nn.init.normal_(self.no_image, 0.0, std)

    def embed(
        self, tokens: torch.Tensor, patches: torch.Tensor, has_image: torch.Tensor
    ) -> torch.Tensor:
        """tokens (B, T) int, patches (B, P, patch_dim) float in [0, 1], has_image (B,) bool
        → x (B, P+T, D)."""
        img = self.patch_embed(patches)  # (B, P, D)
        img = torch.where(has_image[:, None, None], img, self.no_image[None].to(img.dtype))
        return torch.cat([img, self.tok_embed(tokens)], dim=1)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[1]
        cos, sin = self.rope_cos[:s], self.rope_sin[:s]
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)

    def forward(
        self, tokens: torch.Tensor, patches: torch.Tensor, has_image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (h, logits): h (B, P+T, D) shared representation; logits (B, T, V) where
        logits[:, t] predicts tokens[:, t] from everything before it (patches included)."""
        h = self.backbone(self.embed(tokens, patches, has_image))
        p = patches.shape[1]
        t = tokens.shape[1]
        logits = self.lm_head(h[:, p - 1 : p - 1 + t])  # (B, T, V)
        return h, logits

    def num_params(self, include_embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not include_embeddings:
            n -= self.tok_embed.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6·N (non-embedding) + 12·L·D·S for attention (PaLM)."""
        s = seq_len or self.cfg.max_seq_len
        return 6 * self.num_params(include_embeddings=False) + 12 * self.cfg.n_layers * self.cfg.dim * s
