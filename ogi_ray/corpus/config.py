"""Typed configuration of a corpus build: the mixture file (`datasets/*.yaml`).

A mixture names its sources (kind, share, modalities, SPDX license, builder params),
the per-modality exchange rates that turn raw tokens into effective tokens, the
tokenizer settings and the mixing rules. ``load_mixture`` validates it once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ogi_ray.config import ConfigError, from_dict, load_yaml

MODALITIES = ("text", "image", "video", "audio", "proprio", "action")


@dataclass(kw_only=True)
class SourceConfig:
    name: str
    kind: str
    share: float
    modalities: list[str]
    license: str | None = None
    location: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"name: must be a non-empty identifier, got {self.name!r}")
        if not (0.0 < self.share <= 1.0) or not math.isfinite(self.share):
            raise ValueError(f"share: must be in (0, 1], got {self.share}")
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ValueError(f"modalities: unknown {bad} (allowed: {list(MODALITIES)})")


@dataclass(kw_only=True)
class TextTokenizerConfig:
    """Byte-level BPE trained on the corpus' own text (deterministic; see tokenize.py)."""

    vocab_size: int = 4096
    train_chars: int = 2_000_000  # characters sampled per source to train the BPE
    max_tokens: int = 256  # longer documents are split into rows of this many tokens
    # Reuse another corpus' tokenizer instead of training one: a built corpus folder (its
    # tokenizer.json) or a tokenizer.json file, relative to the mixture file. Phases of
    # one run need one vocabulary, so each phase's corpus reuses the first one's.
    reuse: str = ""

    def validate(self) -> None:
        if self.vocab_size < 300:
            raise ValueError("vocab_size: must be >= 300 (256 bytes + specials + merges)")
        if self.max_tokens < 8:
            raise ValueError("max_tokens: must be >= 8")


@dataclass(kw_only=True)
class PatchConfig:
    """Images resized to ``size``×``size`` then cut into ``patch``×``patch`` RGB patches."""

    size: int = 64
    patch: int = 16
    frames_per_tubelet: int = 2  # video: tubelet = frames_per_tubelet × patch × patch
    max_tubelets: int = 64  # video rows are split into chunks of at most this many
    audio_rate: int = 16_000
    audio_frame: int = 400  # samples per audio token (25 ms at 16 kHz)
    max_audio_frames: int = 256
    max_steps: int = 64  # embodied rows: at most this many timesteps

    def validate(self) -> None:
        if self.size % self.patch:
            raise ValueError(f"patch: {self.patch} must divide size {self.size}")


@dataclass(kw_only=True)
class MixingConfig:
    max_repeat: float = 4.0  # a source may be up-sampled to at most this many epochs
    allow_shortfall: bool = False
    # Shares must sum to 1 over the sources the license gate admits. With this set, the
    # admitted sources' shares are instead rescaled to sum to 1 (recorded in the manifest).
    renormalize_after_gate: bool = False
    total_effective_tokens: float | None = None  # None: largest total all sources can meet

    def validate(self) -> None:
        if self.max_repeat < 1.0:
            raise ValueError("max_repeat: must be >= 1")


@dataclass(kw_only=True)
class MixtureConfig:
    name: str
    sources: list[SourceConfig]
    exchange_rates: dict[str, float]
    seed: int = 0
    text_tokenizer: TextTokenizerConfig = field(default_factory=TextTokenizerConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    shard_rows: int = 512
    heldout_fraction: float = 0.0

    def validate(self) -> None:
        if not self.sources:
            raise ValueError("sources: at least one source is required")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"sources: duplicate source names in {names}")
        for m, r in self.exchange_rates.items():
            if m not in MODALITIES:
                raise ValueError(f"exchange_rates: unknown modality {m!r}")
            if not (0.0 < r <= 10.0) or not math.isfinite(r):
                raise ValueError(f"exchange_rates: rate for {m} must be in (0, 10], got {r}")
        for s in self.sources:
            missing = [m for m in s.modalities if m not in self.exchange_rates]
            if missing:
                raise ValueError(f"exchange_rates: no rate for modalities {missing}")
        if self.shard_rows < 1:
            raise ValueError("shard_rows: must be >= 1")
        if not 0.0 <= self.heldout_fraction < 0.5:
            raise ValueError("heldout_fraction: must be in [0, 0.5)")


def load_mixture(path: str | Path) -> MixtureConfig:
    """Load and validate a mixture YAML; errors name the file and the field."""
    data = load_yaml(path)
    cfg = from_dict(MixtureConfig, data, file=path)
    from ogi_ray.corpus.sources import BUILDERS  # local: sources import heavy packages lazily

    for i, s in enumerate(cfg.sources):
        if s.kind not in BUILDERS:
            raise ConfigError(
                path, f"sources[{i}].kind", f"unknown source kind {s.kind!r} (known: {sorted(BUILDERS)})"
            )
    return cfg
