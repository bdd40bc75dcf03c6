"""Typed configuration of a corpus build: the mixture file (`datasets/*.yaml`).

A mixture names its sources (kind, share, modalities, SPDX license, the kind's params),
the per-modality exchange rates that turn raw tokens into effective tokens, the
tokenizer settings and the mixing rules. ``load_mixture`` validates it once, before
anything starts: every field, each source's params against its kind's ``Params``
dataclass (``sources[i].params.KEY``), and each SPDX expression (``sources[i].license``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ogi_ray.config import ConfigError, from_dict, load_yaml

MODALITIES = ("text", "image", "video", "audio", "proprio", "action")


@dataclass(kw_only=True)
class SourceConfig:
    name: str
    kind: str
    share: float
    modalities: list[str]
    license: str | None = None  # SPDX expression of the whole source
    location: str = ""
    # The kind's params: a mapping in the file, the kind's validated Params after loading.
    params: Any = field(default_factory=dict)
    # A bad row (malformed line, undecodable image, ...) fails the build, or with "skip"
    # is left out and counted per reason in the manifest.
    on_error: Literal["fail", "skip"] = "fail"
    task_items: int | None = None  # items per Ray task (default: the kind's TASK_ITEMS)
    task_mb: float = 64.0  # and at most this many MB of input files per task

    def validate(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"name: must be a non-empty identifier, got {self.name!r}")
        if not (0.0 < self.share <= 1.0) or not math.isfinite(self.share):
            raise ValueError(f"share: must be in (0, 1], got {self.share}")
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise ValueError(f"modalities: unknown {bad} (allowed: {list(MODALITIES)})")
        if self.task_items is not None and self.task_items < 1:
            raise ValueError("task_items: must be >= 1")
        if not self.task_mb > 0:
            raise ValueError("task_mb: must be > 0")


@dataclass(kw_only=True)
class TextTokenizerConfig:
    """The text tokenizer (text_tokenizer.py): a byte-level BPE trained on a bounded
    sample of the corpus' own text, or a pretrained file; and how text becomes rows."""

    kind: Literal["bpe", "hf", "tiktoken"] = "bpe"
    file: str = ""  # hf: a tokenizer.json; tiktoken: a BPE file (relative to the mixture)
    pattern: str = ""  # tiktoken: split regex, or a preset name (r50k_base, p50k_base, gpt2)
    special_tokens: dict[str, int] = field(default_factory=dict)  # tiktoken: token -> id
    # Token strings whose ids become bos_id / eos_id / pad_id (bpe: its trained specials).
    bos_token: str = ""
    eos_token: str = ""
    pad_token: str = ""
    vocab_size: int = 4096  # bpe: the trained vocabulary (pretrained: the file's own)
    train_chars: int = 2_000_000  # bpe: characters sampled per source to train on
    # Row length: packed text rows hold this many tokens; captions are cut to it.
    max_tokens: int = 256
    # Text-only documents are packed: joined with EOS into rows of max_tokens tokens
    # (``text_doc_lens`` keeps the boundaries). false: each document's own rows.
    pack: bool = True
    # Reuse another corpus' tokenizer instead of training one: a built corpus folder (its
    # tokenizer.json) or a tokenizer.json file, relative to the mixture file. Phases of
    # one run need one vocabulary, so each phase's corpus reuses the first one's.
    reuse: str = ""

    def validate(self) -> None:
        if self.vocab_size < 300:
            raise ValueError("vocab_size: must be >= 300 (256 bytes + specials + merges)")
        if self.max_tokens < 8:
            raise ValueError("max_tokens: must be >= 8")
        if self.train_chars < 1:
            raise ValueError("train_chars: must be >= 1")
        if self.kind != "bpe" and self.reuse:
            raise ValueError("reuse: only with kind bpe (a pretrained file is named by file)")
        if self.kind == "bpe":
            from ogi_ray.corpus.text_tokenizer import BPE_SPECIALS

            for k, v in BPE_SPECIALS.items():
                if getattr(self, k) not in ("", v):
                    raise ValueError(f"{k}: a trained BPE's is {v!r}")
                setattr(self, k, v)


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
    # Where the rates come from: {"kind": "configured"} for ``exchange_rates`` written in
    # the mixture, or {"kind": "measured", "file", "sha256", "name"} for an
    # ``exchange_rates_file`` (docs/rates.md §5). Filled by load_mixture, recorded in the
    # manifest (and so in its hash and every checkpoint's lineage).
    exchange_rates_source: dict[str, Any] = field(default_factory=lambda: {"kind": "configured"})
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
            if not (0.0 < r < math.inf):
                raise ValueError(f"exchange_rates: rate for {m} must be a finite number > 0, got {r}")
            # Hand-set rates above 10 are more likely a typo than a belief; measured ones
            # may be (docs/rates.md: proprio and action measure above 30 on tiny proxies).
            if self.exchange_rates_source.get("kind") == "configured" and r > 10.0:
                raise ValueError(f"exchange_rates: a configured rate for {m} must be in (0, 10], got {r}")
        for s in self.sources:
            missing = [m for m in s.modalities if m not in self.exchange_rates]
            if missing:
                raise ValueError(f"exchange_rates: no rate for modalities {missing}")
        if self.shard_rows < 1:
            raise ValueError("shard_rows: must be >= 1")
        if not 0.0 <= self.heldout_fraction < 0.5:
            raise ValueError("heldout_fraction: must be in [0, 0.5)")


def load_mixture(path: str | Path) -> MixtureConfig:
    """Load and validate a mixture YAML; errors name the file and the field.

    Rates are ``exchange_rates`` or a pinned ``exchange_rates_file`` (resolved by
    ``corpus.rates_file.mixture_rates``: the file verified, its hash the pinned one).

    Each source's ``params`` become its kind's validated ``Params`` (paths made absolute,
    relative ones against the mixture file's folder); each ``license`` must be a valid
    SPDX expression, and a source needs one unless its rows carry one (``license_field``).
    """
    from ogi_ray.corpus.license import spdx_error
    from ogi_ray.corpus.rates_file import mixture_rates
    from ogi_ray.corpus.sources import kind_of  # local: sources import heavy packages lazily

    data = load_yaml(path)
    if isinstance(data, dict) and "exchange_rates_source" in data:
        raise ConfigError(path, "exchange_rates_source", "is set by the build: give exchange_rates or exchange_rates_file")
    rates, source = mixture_rates(path, data) if isinstance(data, dict) else (None, {})
    if isinstance(data, dict) and "exchange_rates_file" in data:
        data = {**{k: v for k, v in data.items() if k != "exchange_rates_file"},
                "exchange_rates": rates, "exchange_rates_source": source}  # fmt: skip
    cfg = from_dict(MixtureConfig, data, file=path)
    base = str(Path(path).resolve().parent)
    for i, s in enumerate(cfg.sources):
        try:
            kind = kind_of(s.kind)
        except ValueError as e:
            raise ConfigError(path, f"sources[{i}].kind", str(e)) from e
        s.params = kind.prepare(from_dict(kind.mod().Params, s.params, file=path, prefix=f"sources[{i}].params"), base)
        per_row = bool(getattr(s.params, "license_field", ""))
        if s.license is None or not str(s.license).strip():
            if not per_row:
                raise ConfigError(path, f"sources[{i}].license",
                                  "missing: an SPDX expression is required (or params.license_field for per-row licenses)")  # fmt: skip
            s.license = None
        elif err := spdx_error(s.license):
            raise ConfigError(path, f"sources[{i}].license", f"not a valid SPDX expression: {err}")
    return cfg
