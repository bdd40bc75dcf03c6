"""What the planner plans for: the model's shape and a batch of candidate layouts.

    REFERENCE_MODELS / ogi ModelConfig / dict ──planner.model_spec──► ModelSpec
    ParallelPlan(s) ──Layouts.from_plans──► Layouts   (one numpy array per plan field)
    planner.enumerate_layouts ─────────────► Layouts
    ModelSpec + Layouts ──► cost.evaluate (time) and memory.evaluate_memory (bytes)

Both models are vectorised over the candidates of a ``Layouts``, so the search scores
thousands of layouts in one numpy pass. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ogi_ray.config import ConfigError, from_dict

GIB = 2**30
AC_MODES = ("none", "selective", "full")  # index = the code stored in Layouts.ac
PRECISIONS = ("bf16", "fp32")  # bf16: torch.autocast over fp32 parameters; fp32: no autocast


class PlanError(ConfigError):
    """No layout satisfies the constraints, or none fits in memory, or a model is unknown."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__("<plan>", key, message)


@dataclass(kw_only=True)
class ModelSpec:
    params: float  # total parameters N
    layers: int
    hidden: int
    heads: int
    seq_len: int  # slots per row (the layout's total)
    global_batch: int  # rows per optimizer step
    vocab: int = 0  # 0: unknown (no LM head or loss term)
    ffn_hidden: int = 0  # 0: 4 · hidden
    gated_mlp: bool = False  # SwiGLU: three MLP matrices instead of two
    lm_tokens: int = 0  # slots per row that reach the LM head (text); 0: seq_len
    dense_mask: bool = False  # attention takes an (S, S) mask tensor (the ogi model does)
    name: str = "custom"

    def validate(self) -> None:
        for key in ("layers", "hidden", "heads", "seq_len", "global_batch"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be >= 1, got {getattr(self, key)}")
        if not self.params > 0:
            raise ValueError(f"params: must be > 0, got {self.params}")
        if self.hidden % self.heads:
            raise ValueError(f"heads: {self.heads} must divide hidden {self.hidden}")
        for key in ("vocab", "ffn_hidden", "lm_tokens"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if self.lm_tokens > self.seq_len:
            raise ValueError(f"lm_tokens: {self.lm_tokens} exceeds seq_len {self.seq_len}")

    @property
    def ffn(self) -> int:
        return self.ffn_hidden or 4 * self.hidden

    @property
    def mlp_in(self) -> int:
        """Matrices that read the MLP input: w1 and w3 (gated) or w1."""
        return 2 if self.gated_mlp else 1

    @property
    def layer_params(self) -> float:
        """Matmul parameters of one block: q, k, v, o and the MLP matrices."""
        return 4 * self.hidden**2 + (self.mlp_in + 1) * self.hidden * self.ffn

    @property
    def block_params(self) -> float:
        """All parameters of one block: the matmuls and two norm weights."""
        return self.layer_params + 2 * self.hidden

    @property
    def root_params(self) -> float:
        """Everything outside the blocks: embeddings, final norm, heads."""
        return max(self.params - self.layers * self.block_params, 0.0)

    @property
    def embed_params(self) -> float:
        """The input side of the root (first pipeline stage): the token embedding."""
        return min(self.root_params, float(self.vocab * self.hidden)) if self.vocab else self.root_params / 2

    @property
    def head_params(self) -> float:
        """The output side of the root (last pipeline stage): final norm and heads."""
        return self.root_params - self.embed_params

    @property
    def head_matmul_params(self) -> float:
        return min(self.head_params, float(self.vocab * self.hidden))

    @property
    def text_tokens(self) -> int:
        return self.lm_tokens or self.seq_len

    @property
    def matmul_params(self) -> float:
        """Parameters that take part in a matmul: all but the input embedding (a lookup)."""
        emb = self.vocab * self.hidden
        return self.params - emb if emb < self.params else self.params

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6·N + 12·L·h·s for attention (PaLM, Chowdhery et al. 2022)."""
        return 6 * self.matmul_params + 12 * self.layers * self.hidden * self.seq_len

    def flops_per_step(self) -> float:
        return self.flops_per_token() * self.global_batch * self.seq_len


@dataclass
class Layouts:
    """Candidate layouts as parallel arrays, one entry per candidate (ParallelPlan fields)."""

    dp: np.ndarray
    tp: np.ndarray
    pp: np.ndarray
    m: np.ndarray  # micro-batches per optimizer step
    rows: np.ndarray  # rows per micro-batch per dp replica
    ac: np.ndarray  # index into AC_MODES
    sp: np.ndarray  # sequence parallelism (bool)
    raf: np.ndarray  # FSDP2 reshard_after_forward (bool)

    def __post_init__(self) -> None:
        for key in ("dp", "tp", "pp", "m", "rows"):
            setattr(self, key, np.asarray(getattr(self, key), dtype=np.float64))
        self.ac = np.asarray(self.ac, dtype=np.int64)
        self.sp = np.asarray(self.sp, dtype=bool)
        self.raf = np.asarray(self.raf, dtype=bool)

    @classmethod
    def from_plans(cls, plans: Iterable[Any]) -> Layouts:
        ps = list(plans)
        return cls(
            dp=[p.dp for p in ps], tp=[p.tp for p in ps], pp=[p.pp for p in ps],
            m=[p.microbatches for p in ps], rows=[p.micro_batch_rows for p in ps],
            ac=[AC_MODES.index(p.activation_checkpoint) for p in ps],
            sp=[p.sequence_parallel for p in ps], raf=[p.reshard_after_forward for p in ps],
        )

    @property
    def size(self) -> int:
        return int(self.dp.size)

    @property
    def world(self) -> np.ndarray:
        return self.dp * self.tp * self.pp

    def stage_layers(self, layers: int) -> tuple[np.ndarray, np.ndarray]:
        """Blocks on the first and on the last stage. The pipeline builder gives the first
        ``layers % pp`` stages one extra block, so the first stage holds ceil(L/p)."""
        first = np.ceil(layers / self.pp)
        last = np.where(self.pp > 1, np.floor(layers / self.pp), layers)
        return first, last


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


# --- model descriptions -----------------------------------------------------------------

# Published configurations to plan for (not trainable presets).
REFERENCE_MODELS: dict[str, dict[str, Any]] = {
    # Brown et al. 2020, Table 2.1: 96 layers, d 12288, 96 heads, 2048 context, batch
    # 3.2M tokens = 1536 sequences; vocabulary padded to 51200 as in Megatron-LM.
    "gpt3-175b": dict(params=175e9, layers=96, hidden=12288, heads=96, seq_len=2048,
                      global_batch=1536, vocab=51200),
    # Narayanan et al. 2021, Table 1 (1T row): 128 layers, h 25600, 160 heads, batch 3072.
    "megatron-1t": dict(params=1.008e12, layers=128, hidden=25600, heads=160, seq_len=2048,
                        global_batch=3072, vocab=51200),
}
DEFAULT_ROWS_PER_DEVICE = 8  # the training config's default data.batch_size


def backbone_params(cfg: Any) -> int:
    """Parameters of the transformer backbone of an ogi_ray ModelConfig, counted analytically.

    Per block q, k, v, o (4d²), SwiGLU w1, w3, w2 (3·d·hidden_dim) and two RMSNorms (2d);
    plus token embedding and LM head (2·V·d) and the final norm (d). Counted, not built:
    building the model would import torch into the planner.
    """
    d, hid = cfg.dim, cfg.hidden_dim
    return cfg.n_layers * (4 * d * d + 3 * d * hid + 2 * d) + 2 * cfg.vocab_size * d + d


def model_params(cfg: Any) -> int:
    """All parameters of ``ogi_ray.model.MultimodalTransformer(cfg)``: the backbone plus
    the embedders, segment/absent embeddings and heads of the segments the layout has."""
    d, lay = cfg.dim, cfg.layout
    lin = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    n = backbone_params(cfg)
    segments = [k for k, v in lay.sizes().items() if v]
    n += d * len(segments) + d * len([k for k in segments if k != "txt"])  # seg_embed, absent
    if lay.n_img:
        n += lin(cfg.img_dim, d) + d + lin(d, cfg.img_dim)  # img_embed, mask_token, mae_head
    if lay.n_vid:
        n += lin(cfg.vid_dim, d)
    if lay.n_aud:
        n += lin(cfg.aud_dim, d)
    if lay.n_steps:
        n += lin(cfg.prop_dim, d) + lin(cfg.act_dim, d) + 2 * lin(d, d) + lin(d, cfg.act_dim)
    if lay.n_img or lay.n_vid:
        n += 2 * d * d + 1  # align_img, align_txt, logit_scale
    if lay.n_chunks >= 2:
        n += d + lin(d, d)  # null_action, world_head
    return n


def _spec_from_model_config(cfg: Any, global_batch: int, seq_len: int | None) -> ModelSpec:
    full = hasattr(cfg, "layout")  # a real ModelConfig (else a look-alike with the shape only)
    return from_dict(ModelSpec, dict(
        name=getattr(cfg, "preset", "model"),
        params=float(model_params(cfg) if full else backbone_params(cfg)),
        layers=cfg.n_layers, hidden=cfg.dim, heads=cfg.n_heads,
        seq_len=seq_len or cfg.max_seq_len, global_batch=global_batch,
        vocab=cfg.vocab_size, ffn_hidden=cfg.hidden_dim, gated_mlp=True,
        lm_tokens=min(cfg.n_text, seq_len or cfg.max_seq_len) if full else 0,
        dense_mask=full), file="<model>")


def model_spec(
    model: Any, *, global_batch: int | None = None, seq_len: int | None = None,
    world_size: int = 1,
) -> ModelSpec:
    """Normalise what callers have into a ModelSpec.

    ``model``: a ModelSpec; a name from REFERENCE_MODELS or an ``ogi_ray.model`` preset; a
    mapping of ModelSpec fields; or a ModelConfig-like object (dim, n_layers, n_heads, ...).
    ``global_batch``/``seq_len`` override the model's; a model without a batch gets
    DEFAULT_ROWS_PER_DEVICE rows per device of ``world_size``.
    """
    default_batch = global_batch or DEFAULT_ROWS_PER_DEVICE * world_size
    if isinstance(model, ModelSpec):
        data = asdict(model)
    elif isinstance(model, str) and model in REFERENCE_MODELS:
        data = dict(REFERENCE_MODELS[model], name=model)
    elif isinstance(model, str):
        from ogi_ray.model.config import preset  # ogi_ray.model's package imports torch

        try:
            cfg = preset(model)
        except ValueError as e:
            raise PlanError(f"{e}; or one of {sorted(REFERENCE_MODELS)}", "model") from None
        return _spec_from_model_config(cfg, default_batch, seq_len)
    elif isinstance(model, dict):
        data = dict(model)
        data.setdefault("global_batch", default_batch)
    elif hasattr(model, "n_layers") and hasattr(model, "dim"):
        return _spec_from_model_config(model, default_batch, seq_len)
    else:
        raise PlanError(f"cannot describe a model from {type(model).__name__}", "model")
    if global_batch:
        data["global_batch"] = global_batch
    if seq_len:
        data["seq_len"] = seq_len
    return from_dict(ModelSpec, data, file="<model>")
