"""Code source: CPython's standard library ``.py`` files on disk (PSF-2.0).

params: ``max_files`` (int, default all), ``include_tests`` (bool, default False),
``root`` (override the stdlib path; used by tests to point at a copy).
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ogi_ray.corpus.sources import RawSample, spread

TASK_ITEMS = 16  # one file per item: a task reads several, so they pack into full rows


@dataclass(kw_only=True)
class Params:
    max_files: int | None = None  # an evenly spaced subset of the sorted files
    include_tests: bool = False
    root: str = ""  # another folder instead of the stdlib (relative: to the mixture file)

    def validate(self) -> None:
        if self.max_files is not None and self.max_files < 1:
            raise ValueError("max_files: must be >= 1")


def prepare(params: Params, base: str) -> Params:
    if params.root and not Path(params.root).is_absolute():
        params.root = str((Path(base) / params.root).resolve())
    return params


def _root(params: Params) -> Path:
    return Path(params.root or sysconfig.get_paths()["stdlib"])


def items(params: Params) -> list[str]:
    root = _root(params)
    skip = {"site-packages", "__pycache__"}
    if not params.include_tests:
        skip |= {"test", "tests", "idle_test"}
    files = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if not skip.intersection(p.relative_to(root).parts)
    )
    # Evenly spaced over the sorted list, so a small sample still spans the library.
    return spread(files, params.max_files)


def read(item: str, params: Params) -> Iterator[RawSample]:
    path = _root(params) / item
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.strip():
        yield {"doc_id": item, "text": text}
