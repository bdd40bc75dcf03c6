"""Model configuration and named presets (``tiny`` for tests, ``small`` for the demo and
benchmarks on 2 CPU cores, ``base`` for real hardware)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(kw_only=True)
class ModelConfig:
    preset: str = "tiny"
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: float = 4.0
    vocab_size: int = 4096  # must cover the corpus tokenizer's vocabulary
    max_seq_len: int = 256  # image patches + text tokens
    image_patch_dim: int = 192  # 3·P·P of the corpus' patch tokenizer
    image_patches: int = 64  # patches per image in the corpus
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def validate(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"n_heads: {self.n_heads} must divide dim {self.dim}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError("dim: head dimension must be even (rotary embeddings)")
        if self.n_layers < 1:
            raise ValueError("n_layers: must be >= 1")
        if self.max_seq_len <= self.image_patches:
            raise ValueError("max_seq_len: must exceed image_patches")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        # SwiGLU hidden size: 2/3 of mlp_ratio·dim, rounded to a multiple of 64 so the
        # matrix shapes suit AMX/tensor-core tiles.
        h = int(2 * self.mlp_ratio * self.dim / 3)
        return max(64, (h + 63) // 64 * 64)


PRESETS: dict[str, dict] = {
    "tiny": {"dim": 64, "n_layers": 2, "n_heads": 4},
    "small": {"dim": 256, "n_layers": 4, "n_heads": 4},
    "base": {"dim": 768, "n_layers": 12, "n_heads": 12},
}


def preset(name: str, **overrides: object) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"preset: unknown model preset {name!r} (known: {sorted(PRESETS)})")
    cfg = replace(ModelConfig(preset=name), **PRESETS[name], **overrides)  # type: ignore[arg-type]
    cfg.validate()
    return cfg
