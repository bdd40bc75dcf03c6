"""Technical documents: the Python 3.11 documentation (PSF-2.0).

Data:

* ``pydoc_data.topics``: the 79 language-reference topics that ``help()`` shows, as
  plain text; part of the stdlib, so always present. Items ``topic:<name>``.
* when installed, the reST sources of the full manual from Debian's ``python3.11-doc``
  (``/usr/share/doc/python3.11/html/_sources/**/*.rst.txt``: 497 files, 11 MB of
  tutorial, library reference, HOWTOs and FAQs). Items ``rst:<path relative to _sources>``.
  The reST markup is kept: it is what technical documents look like in the wild.

Install the Debian sources with ``apt-get install python3.11-doc`` (done by
``scripts/setup_data.sh``); without them the source still works from ``pydoc_data``.

params: ``max_items`` (int, default all: an evenly spaced subset of the sorted items),
``use_debian_docs`` (bool, default True; ignored when the package is not installed),
``docs_root`` (override the ``_sources`` directory; used by tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ogi_ray.corpus.sources import RawSample, spread

DEBIAN_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
TASK_ITEMS = 16  # one document per item: a task reads several, so they pack into full rows


@dataclass(kw_only=True)
class Params:
    max_items: int | None = None  # an evenly spaced subset of the sorted items
    use_debian_docs: bool = True  # ignored when python3.11-doc is not installed
    docs_root: str = ""  # override the _sources directory (tests)

    def validate(self) -> None:
        if self.max_items is not None and self.max_items < 1:
            raise ValueError("max_items: must be >= 1")


def _docs_root(params: Params) -> Path | None:
    if not params.use_debian_docs:
        return None
    root = Path(params.docs_root or DEBIAN_SOURCES)
    return root if root.is_dir() else None


def items(params: Params) -> list[str]:
    from pydoc_data.topics import topics

    out = [f"topic:{name}" for name in topics]
    root = _docs_root(params)
    if root is not None:
        out += [f"rst:{p.relative_to(root).as_posix()}" for p in root.rglob("*.rst.txt")]
    out.sort()
    # Evenly spaced over the sorted list, so a subset samples both the topics and every
    # part of the manual (c-api, library, tutorial, ...).
    return spread(out, params.max_items)


def read(item: str, params: Params) -> Iterator[RawSample]:
    kind, _, key = item.partition(":")
    if kind == "topic":
        from pydoc_data.topics import topics

        text = topics[key]
    elif kind == "rst":
        root = _docs_root(params)
        if root is None:
            raise FileNotFoundError(
                f"python_docs: {item} needs Debian's python3.11-doc "
                f"({DEBIAN_SOURCES} missing): apt-get install python3.11-doc"
            )
        path = (root / key).resolve()
        if root.resolve() not in path.parents:  # item names come from configs: stay inside
            raise ValueError(f"python_docs: item {item!r} points outside {root}")
        text = path.read_text(encoding="utf-8", errors="replace")
    else:
        raise ValueError(f"python_docs: unknown item {item!r} (expected topic:… or rst:…)")
    text = text.strip()
    if text:
        yield {"doc_id": item, "text": text}
