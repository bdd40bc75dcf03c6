"""Code source: CPython's standard library ``.py`` files on disk (PSF-2.0).

params: ``max_files`` (int, default all), ``include_tests`` (bool, default False),
``root`` (override the stdlib path; used by tests to point at a copy).
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path

from ogi_ray.corpus.sources import RawSample


def _root(params: dict) -> Path:
    return Path(params.get("root") or sysconfig.get_paths()["stdlib"])


def items(params: dict) -> list[str]:
    root = _root(params)
    skip = {"site-packages", "__pycache__"}
    if not params.get("include_tests", False):
        skip |= {"test", "tests", "idle_test"}
    files = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if not skip.intersection(p.relative_to(root).parts)
    )
    max_files = params.get("max_files")
    if max_files is not None:
        # Evenly spaced over the sorted list, so a small sample still spans the library.
        step = max(1, len(files) // int(max_files))
        files = files[::step][: int(max_files)]
    return files


def read(item: str, params: dict) -> Iterator[RawSample]:
    path = _root(params) / item
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.strip():
        yield {"doc_id": item, "text": text}
