"""Speech with transcripts: real sentences read aloud by Debian's ``espeak-ng`` synthesizer.

Text: sentences of real prose, by default from the English Wikipedia articles in gensim's
test data (the same 106 articles as ``gensim_web``; CC-BY-SA-3.0): the first
``per_article`` speakable sentences of each article (40-160 characters, letters and plain
punctuation only, so there is no markup or notation that TTS would spell out), articles
in dump order. ``text_source: lee`` reads sentences of the Lee ABC news corpus instead
(gensim-redistributed, no explicit license).

Audio: ``espeak-ng -v <voice> -s <speed> -w out.wav`` (22,050 Hz), read with soundfile,
resampled to ``audio_rate`` with a polyphase filter. Synthetic speech: the engine is
espeak-ng (GPL-3.0; its output is not a derivative of the program); the transcript keeps
its text source's license. Install with ``apt-get install espeak-ng``
(``scripts/setup_data.sh`` does it). Audio is cached per batch as .npz under
``$OGI_CACHE_DIR/espeak`` (default ``~/.cache/ogi_ray``), keyed by text, params and the
espeak-ng version.

Items: batches of sentences, ``<source>:0000-0024``. Each sentence is one sample with
``audio`` (float32 mono), ``audio_rate`` and ``text`` (the transcript).

params: ``max_items`` (number of sentences, default 200), ``batch_size`` (default 25),
``text_source`` ("wiki" or "lee", default "wiki"), ``per_article`` (default 3),
``voice`` (default "en-us"), ``speed`` (words per minute, default 160), ``audio_rate``
(default 16000).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ogi_ray.corpus.sources import RawSample
from ogi_ray.corpus.sources._cache import atomic_write, cache_dir, key_digest, load_npz, save_npz
from ogi_ray.corpus.tokenize import SourceDataError

ESPEAK = "espeak-ng"
SELECTION_VERSION = 1  # bump when the sentence rules below change: it keys the cached list
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
_SPEAKABLE = re.compile(r"[A-Za-z0-9 ,.;:'\"!?\-]+")


@dataclass(kw_only=True)
class Params:
    max_items: int = 200  # sentences
    batch_size: int = 25
    text_source: str = "wiki"
    per_article: int = 3
    voice: str = "en-us"
    speed: int = 160  # words per minute
    audio_rate: int = 16_000

    def validate(self) -> None:
        for k in ("max_items", "batch_size", "per_article", "speed", "audio_rate"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}: must be >= 1")
        if self.text_source not in ("wiki", "lee"):
            raise ValueError(f"text_source: must be wiki or lee, got {self.text_source!r}")


def _speakable(paragraph: str, limit: int) -> list[str]:
    out = []
    for s in _SPLIT.split(" ".join(paragraph.split())):
        if 40 <= len(s) <= 160 and _SPEAKABLE.fullmatch(s) and s[-1] in ".!?":
            out.append(s)
            if len(out) == limit:
                break
    return out


@functools.lru_cache(maxsize=4)
def sentences(text_source: str, per_article: int) -> tuple[str, ...]:
    """The candidate sentences, in a fixed order (documents in file order).

    Extracting them parses and cleans the whole wiki dump (~3 s), which every Ray worker
    would repeat, so the list is cached as JSON next to the audio.
    """
    from importlib.metadata import version

    key = [text_source, per_article, version("gensim"), SELECTION_VERSION]
    path = cache_dir("espeak") / f"sentences-{key_digest(key)}.json"
    if path.is_file():
        return tuple(json.loads(path.read_text(encoding="utf-8")))
    out = _extract(text_source, per_article)
    atomic_write(path, lambda f: f.write(json.dumps(out, ensure_ascii=False).encode("utf-8")))
    return out


def _extract(text_source: str, per_article: int) -> tuple[str, ...]:
    from ogi_ray.corpus.sources import gensim_web

    if text_source == "wiki":
        docs = [gensim_web.clean_wiki(raw) for raw in gensim_web._wiki_pages().values()]
    elif text_source == "lee":
        docs = list(gensim_web._lee_docs())
    else:
        raise ValueError(f"espeak_speech: text_source must be 'wiki' or 'lee', got {text_source!r}")
    out: list[str] = []
    for doc in docs:
        # List items, captions and table remnants are not sentences; prose paragraphs are.
        paragraphs = [
            p for p in doc.split("\n") if len(p) > 80 and not p.startswith(("*", "|", "!"))
        ]
        got: list[str] = []
        for p in paragraphs:
            got += _speakable(p, per_article - len(got))
            if len(got) >= per_article:
                break
        out += got
    return tuple(out)


def _selected(params: Params) -> tuple[str, ...]:
    return sentences(params.text_source, params.per_article)[: params.max_items]


def items(params: Params) -> list[str]:
    src = params.text_source
    n, bs = len(_selected(params)), params.batch_size
    return [f"{src}:{lo:04d}-{min(lo + bs, n) - 1:04d}" for lo in range(0, n, bs)]


@functools.lru_cache(maxsize=1)  # a subprocess: once per process, not once per batch
def _espeak_version() -> str:
    if shutil.which(ESPEAK) is None:
        raise FileNotFoundError(f"espeak_speech: {ESPEAK} not found: apt-get install espeak-ng")
    return subprocess.run([ESPEAK, "--version"], capture_output=True, text=True).stdout.strip()


def synthesize(text: str, voice: str, speed: int, rate: int) -> np.ndarray:
    """float32 mono speech for ``text`` at ``rate`` Hz."""
    import soundfile as sf
    from scipy.signal import resample_poly

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        # Text goes in on stdin so a sentence starting with "-" is never read as an option.
        proc = subprocess.run([ESPEAK, "-v", voice, "-s", str(speed), "--stdin", "-w", str(wav)],
                              input=text, capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0 or not wav.is_file():
            raise RuntimeError(
                f"espeak_speech: espeak-ng failed on {text[:60]!r}: {proc.stderr.strip()}"
            )
        audio, src_rate = sf.read(str(wav), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if src_rate != rate:
        g = np.gcd(int(src_rate), int(rate))
        audio = resample_poly(audio, rate // g, int(src_rate) // g)
    return np.ascontiguousarray(audio, dtype=np.float32)


def read(item: str, params: Params) -> Iterator[RawSample]:
    src, _, span = item.partition(":")
    try:
        lo, hi = (int(x) for x in span.split("-"))
    except ValueError:
        raise ValueError(f"espeak_speech: item {item!r} is not '<source>:<lo>-<hi>'") from None
    batch = _selected(params)[lo : hi + 1]
    voice, speed, rate = params.voice, params.speed, params.audio_rate
    key = {"text": batch, "voice": voice, "speed": speed, "rate": rate, "espeak": _espeak_version()}
    path = cache_dir("espeak") / f"{src}_{lo:04d}-{key_digest(key)}.npz"
    # Clips of different lengths are stored concatenated, with their offsets.
    cached = load_npz(path)
    if cached is not None:
        clips = np.split(cached["audio"], cached["offsets"][1:-1])
    else:
        clips = [synthesize(s, voice, speed, rate) for s in batch]
        offsets = np.cumsum([0] + [len(c) for c in clips])
        save_npz(path, {"audio": np.concatenate(clips), "offsets": offsets})
    for i, (text, audio) in enumerate(zip(batch, clips, strict=True)):
        if not np.isfinite(audio).all():
            raise SourceDataError("espeak_speech", item, "audio", f"NaN or inf ({text[:40]!r})")
        yield {"doc_id": f"{src}:{lo + i:04d}", "text": text, "audio": audio, "audio_rate": rate}
