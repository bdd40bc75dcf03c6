"""Web text: English Wikipedia articles and ABC news stories from gensim's test data.

Data (inside the gensim wheel, ``gensim/test/test_data/``):

* ``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``: a real 2016
  enwiki XML dump, read with gensim's own ``extract_pages`` (main namespace only) and
  ``filter_wiki``; redirects are dropped, leaving 106 articles (Anarchism, Autism, ...).
  License: CC-BY-SA-3.0 (Wikipedia text).
* ``lee_background.cor``: 300 ABC news articles, one per line (the Lee corpus, which gensim
  redistributes for research; no explicit license is stated).

Items: ``wiki:<title>`` (one article) and ``lee:<NNN>`` (one news story, by line number).
Each item yields one sample ``{"doc_id": item, "text": ...}``.

The cleaned articles are cached as JSON under ``$OGI_CACHE_DIR/gensim_web`` (keyed by the
dump's size, gensim's version and the cleaning rules), so Ray workers neither import
gensim nor re-parse the dump.

params: ``max_items`` (int, default all: an evenly spaced subset of the sorted items),
``include`` (list of "wiki", "lee"; default both).
"""

from __future__ import annotations

import bz2
import functools
import importlib.util
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ogi_ray.corpus.sources import RawSample, spread
from ogi_ray.corpus.sources._cache import atomic_write, cache_dir, key_digest

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_FILE = "lee_background.cor"
CLEAN_VERSION = 1  # bump when clean_wiki changes: it keys the cached plain text
TASK_ITEMS = 16  # one document per item: a task reads several, so they pack into full rows


@dataclass(kw_only=True)
class Params:
    max_items: int | None = None  # an evenly spaced subset of the sorted items
    include: list[str] = field(default_factory=lambda: ["wiki", "lee"])

    def validate(self) -> None:
        if self.max_items is not None and self.max_items < 1:
            raise ValueError("max_items: must be >= 1")
        bad = sorted(set(self.include) - {"wiki", "lee"})
        if bad or not self.include:
            raise ValueError(f"include: must be a non-empty subset of [wiki, lee], got {self.include}")


def _datapath(name: str) -> str:
    # Found without importing gensim (~1 s), so a warm cache never imports it.
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("gensim_web: gensim is not installed (pip install gensim)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / name)


@functools.lru_cache(maxsize=1)
def _wiki_pages() -> dict[str, str]:
    """title -> raw wikitext. Parsing the dump costs ~0.5 s, so each process does it once."""
    from gensim.corpora.wikicorpus import extract_pages

    pages: dict[str, str] = {}
    with bz2.open(_datapath(WIKI_FILE)) as f:
        for title, text, _pageid in extract_pages(f, filter_namespaces=("0",)):
            if text and not text.lstrip().lower().startswith("#redirect"):
                pages.setdefault(title, text)  # first revision wins if a title repeats
    return pages


@functools.lru_cache(maxsize=1)
def _clean_pages() -> dict[str, str]:
    """title -> plain text of every article, cached as JSON: parsing and cleaning the dump
    (with gensim's import, ~2 s) would otherwise be repeated by every Ray worker process."""
    from importlib.metadata import version

    dump = Path(_datapath(WIKI_FILE))
    key = {"file": WIKI_FILE, "bytes": dump.stat().st_size, "gensim": version("gensim"),
           "clean": CLEAN_VERSION}  # fmt: skip
    path = cache_dir("gensim_web") / f"wiki-{key_digest(key)}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    pages = {title: clean_wiki(raw) for title, raw in _wiki_pages().items()}
    atomic_write(path, lambda f: f.write(json.dumps(pages, ensure_ascii=False).encode("utf-8")))
    return pages


@functools.lru_cache(maxsize=1)
def _lee_docs() -> tuple[str, ...]:
    with open(_datapath(LEE_FILE), encoding="utf-8", errors="replace") as f:
        return tuple(line.strip() for line in f)


_HEADING = re.compile(r"^\s*(=+)\s*(.*?)\s*\1\s*$", re.MULTILINE)
_EMPHASIS = re.compile(r"'{2,}")
_BLANKS = re.compile(r"\n{3,}")


def clean_wiki(raw: str) -> str:
    """Plain text of one article: gensim's ``filter_wiki`` removes links, templates, tables
    and refs; it leaves '''bold''' quotes and ==heading== marks, which are removed here so
    the model sees prose, not markup."""
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(raw)
    text = _HEADING.sub(r"\2", text)
    text = _EMPHASIS.sub("", text)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return _BLANKS.sub("\n\n", text).strip()


def items(params: Params) -> list[str]:
    include = set(params.include)
    out: list[str] = []
    if "wiki" in include:
        out += [f"wiki:{t}" for t in _clean_pages()]
    if "lee" in include:
        out += [f"lee:{i:03d}" for i, doc in enumerate(_lee_docs()) if doc]
    # Evenly spaced over the sorted list, so a small subset still spans both corpora.
    return spread(sorted(out), params.max_items)


def read(item: str, params: Params) -> Iterator[RawSample]:
    corpus, _, key = item.partition(":")
    if corpus == "wiki":
        pages = _clean_pages()
        if key not in pages:
            raise KeyError(f"gensim_web: no article titled {key!r} in {WIKI_FILE}")
        text = pages[key]
    elif corpus == "lee":
        text = _lee_docs()[int(key)]
    else:
        raise ValueError(f"gensim_web: unknown item {item!r} (expected wiki:<title> or lee:<n>)")
    if text:
        yield {"doc_id": item, "text": text}
