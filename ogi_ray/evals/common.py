"""What every benchmark shares: the loaded model, descriptors, hashing, determinism.

    LoadedModel (model in eval mode on CPU, its ModelConfig, the corpus manifest, the
    corpus' text tokenizer (its own BOS/EOS/PAD), the corpus folder, the EMA world target) ─► a benchmark's
    ``run(lm, config) -> {score_name: float}``

A benchmark module defines ``NAME``, ``VERSION``, a ``Config`` dataclass, and
``data_sha256(lm, config)`` (SHA-256 of the exact benchmark bytes the run reads),
``skip_reason(lm, config)`` (None when the benchmark applies to the model's layout)
and ``run(lm, config)``. ``suite.py`` runs the configured ones under ``deterministic``.

Scores are recorded as ``"%.6f"`` decimal strings (``format_score``), so a verifier that
re-runs an eval on CPU compares strings.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ogi_ray.corpus.config import PatchConfig
from ogi_ray.corpus.text_tokenizer import TextTokenizer
from ogi_ray.model.config import ModelConfig


class EvalError(ValueError):
    """A benchmark's input is unusable (missing file, bad field, wrong shape): says which."""


@dataclass
class LoadedModel:
    """A checkpoint ready to evaluate: what ``load_fn(run, step)`` returns.

    ``corpus_dir`` is needed by the benchmarks that read corpus files (held-out rows,
    the trained Meta-World tasks); ``world_target`` is the EMA target encoder the world
    objective trained against (``world_target.pt``), None to use the online embedder."""

    model: nn.Module
    cfg: ModelConfig
    manifest: dict[str, Any]
    tokenizer: TextTokenizer
    corpus_dir: str = ""  # a local folder or any pyarrow URI
    world_target: nn.Module | None = None
    seed: int = 0  # the run's loop.seed (held-out rows are collated with it)


@dataclass(frozen=True)
class Descriptor:
    """What the lineage records about one benchmark that ran."""

    name: str
    version: str
    data_sha256: str
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "data_sha256": self.data_sha256,
                "config": self.config}  # fmt: skip


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def format_score(x: float) -> str:
    """The recorded form of a score: ``"%.6f"``; NaN and infinity are refused."""
    if not math.isfinite(x):
        raise EvalError(f"score {x!r} is not finite")
    s = f"{x:.6f}"
    return "0.000000" if s == "-0.000000" else s


@contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fixed intra-op threads, no autograd; restores the caller's thread count.

    On CPU, torch's kernels give the same bits for the same inputs, shapes, thread count
    and CPU instruction set; every random draw in the evals comes from an explicit
    seeded ``torch.Generator``, never the global RNG."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(before)


def patch_config(manifest: dict[str, Any]) -> PatchConfig:
    """The corpus' image/video/audio/step tokenizer settings, from its manifest."""
    try:
        tok = manifest["tokenizers"]
        return PatchConfig(
            size=int(tok["image"]["size"]), patch=int(tok["image"]["patch"]),
            frames_per_tubelet=int(tok["video"]["frames"]), max_tubelets=int(tok["video"]["max_tubelets"]),
            audio_rate=int(tok["audio"]["rate"]), audio_frame=int(tok["audio"]["frame"]),
            max_audio_frames=int(tok["audio"]["max_frames"]), max_steps=int(tok["proprio"]["max_steps"]),
        )  # fmt: skip
    except KeyError as e:
        raise EvalError(f"manifest: field 'tokenizers' lacks {e}") from None


def heldout_paths(lm: LoadedModel) -> list[str]:
    """The corpus' held-out shard files (paths or URIs), in manifest order, each checked
    to exist."""
    from ogi_ray.storage import Store

    corpus = Store(lm.corpus_dir)
    rels = [s["path"] for s in lm.manifest.get("heldout_shards", [])]
    for rel in rels:
        if not corpus.is_file(rel):
            raise EvalError(f"{corpus.where(rel)}: listed in the manifest's 'heldout_shards' but missing")
    return [corpus.where(rel) for rel in rels]


def heldout_sha256(lm: LoadedModel) -> str:
    """The data hash of the benchmarks that read held-out rows: SHA-256 over (relative
    path, NUL, the file's SHA-256) of each shard, streamed from storage."""
    from ogi_ray.storage import Store

    corpus = Store(lm.corpus_dir)
    h = hashlib.sha256()
    for s in lm.manifest.get("heldout_shards", []):
        h.update(s["path"].encode() + b"\0" + corpus.sha256(s["path"]).encode())
    return h.hexdigest()


def sources_of_kind(manifest: dict[str, Any], kind: str) -> list[str]:
    """Names of the corpus' sources built by the builder ``kind``."""
    return [s["name"] for s in manifest.get("sources", []) if s.get("kind") == kind]
