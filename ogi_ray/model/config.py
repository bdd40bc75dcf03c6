"""Model configuration and named presets (``tiny`` for tests, ``small`` for the demo and
benchmarks on 2 CPU cores, ``base`` for real hardware)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ogi_ray.model.layout import Layout


@dataclass(kw_only=True)
class ModelConfig:
    preset: str = "tiny"
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 4.0
    vocab_size: int = 4096  # must cover the corpus tokenizer's vocabulary
    pad_id: int = 0  # the corpus tokenizer's PAD (filled from the manifest): unfilled text slots
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # Token layout (model/layout.py). The training driver fills these from the corpus
    # manifest; a segment with 0 slots is absent (its objectives are off).
    n_text: int = 128
    n_img: int = 0
    img_dim: int = 192  # 3·p·p
    n_vid: int = 0
    vid_group: int = 1
    vid_dim: int = 384  # F·3·p·p
    n_aud: int = 0
    aud_dim: int = 400
    n_steps: int = 0
    prop_dim: int = 16  # proprio vectors zero-padded to this width
    act_dim: int = 16  # action vectors zero-padded to this width
    mask_ratio: float = 0.75  # MAE
    # World-model target encoder: θ̄ ← decay·θ̄ + (1 − decay)·θ after each step. 1.0 keeps
    # the initial random projection: with the EMA (0.99, 0.999) the robot-video targets
    # collapsed as the online embedder did (docs/objectives.md, "Was the world loss collapse?").
    ema_decay: float = 1.0

    def validate(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"n_heads: {self.n_heads} must divide dim {self.dim}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError("dim: head dimension must be even (rotary embeddings)")
        if self.n_layers < 1:
            raise ValueError("n_layers: must be >= 1")
        if self.n_vid and self.n_vid % self.vid_group:
            raise ValueError(f"n_vid: {self.n_vid} must be a multiple of vid_group {self.vid_group}")
        if self.n_text < 2:
            raise ValueError("n_text: must be >= 2")
        if not 0 < self.mask_ratio < 1:
            raise ValueError("mask_ratio: must be in (0, 1)")

    @property
    def layout(self) -> Layout:
        return Layout(n_img=self.n_img, n_vid=self.n_vid, vid_group=self.vid_group,
                      n_aud=self.n_aud, n_steps=self.n_steps, n_text=self.n_text)  # fmt: skip

    @property
    def max_seq_len(self) -> int:
        return self.layout.seq_len

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        # SwiGLU hidden size: 2/3 of mlp_ratio·dim, rounded to a multiple of 64 so the
        # matrix shapes suit AMX/tensor-core tiles.
        h = int(2 * self.mlp_ratio * self.dim / 3)
        return max(64, (h + 63) // 64 * 64)

    @property
    def objectives(self) -> list[str]:
        """The objectives this layout can train (the order the tuner uses)."""
        out = ["lm"]
        if self.n_img:
            out += ["vision", "align"]
        elif self.n_vid:
            out += ["align"]
        if self.n_vid and self.n_vid // self.vid_group >= 2:
            out.append("world")
        if self.n_steps:
            out.append("embod")
        return out


PRESETS: dict[str, dict] = {
    "tiny": {"dim": 64, "n_layers": 2, "n_heads": 4},
    "small": {"dim": 256, "n_layers": 4, "n_heads": 4},
    "base": {"dim": 768, "n_layers": 12, "n_heads": 12},
}


def preset(name: str, **overrides: object) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"preset: unknown model preset {name!r} (known: {sorted(PRESETS)})")
    cfg = replace(ModelConfig(preset=name), **{**PRESETS[name], **overrides})  # type: ignore[arg-type]
    cfg.validate()
    return cfg
