"""The corpus' text tokenizer: trained on a bounded sample, or a pretrained file, offline.

    text_tokenizer.kind
      bpe       byte-level BPE (HF ``tokenizers``) trained on at most ``train_chars``
                characters per source; specials <|pad|>, <|eos|>, <|bos|> are trained in
      hf        a Hugging Face ``tokenizer.json`` (``file``)
      tiktoken  a tiktoken BPE file (``file``: base64 token + rank per line) with its
                split ``pattern`` (a preset name or a regex) and ``special_tokens``
    ─► TextTokenizer: the file's bytes (copied into the corpus and hashed into the
       manifest), bos/eos/pad ids, vocab size ─► encode_batch in Ray workers

BOS/EOS/PAD are looked up in the tokenizer by the configured token strings
(``bos_token``, ``eos_token``, ``pad_token``; for ``bpe`` the trained ones), never
assumed: a pretrained tokenizer that lacks one is a ConfigError naming the field. One
token may serve several roles (GPT-2's ``<|endoftext|>`` is commonly EOS, BOS and PAD).
Document text is encoded as plain text: a special token's string inside a document is
never turned into a control id (``encode_special_tokens`` / ``encode_ordinary``).
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ogi_ray.config import ConfigError

BPE_SPECIALS = {"pad_token": "<|pad|>", "eos_token": "<|eos|>", "bos_token": "<|bos|>"}
ENCODE_BATCH = 256  # documents per encode call


@dataclass(frozen=True)
class TextTokenizer:
    kind: str  # "bpe" | "hf" | "tiktoken"
    data: bytes  # the tokenizer file, as stored in the corpus
    bos_id: int
    eos_id: int
    pad_id: int
    vocab_size: int  # ids are < vocab_size
    pattern: str = ""  # tiktoken
    specials: dict[str, int] = field(default_factory=dict)  # tiktoken

    @property
    def file(self) -> str:
        return "tokenizer.tiktoken" if self.kind == "tiktoken" else "tokenizer.json"

    def encode(self, text: str) -> list[int]:
        """The ids of one text, no specials added."""
        return self.encode_batch([text])[0].tolist()

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; special tokens (BOS, EOS, PAD) are dropped."""
        enc = _encoder(self.kind, self.data, self.pattern, tuple(sorted(self.specials.items())))
        ids = [int(i) for i in ids if int(i) not in (self.bos_id, self.eos_id, self.pad_id)]
        if self.kind == "tiktoken":
            return enc.decode(ids)
        return enc.decode(ids, skip_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """int32 ids of each text, no specials added ('' gives no ids)."""
        out = [np.zeros(0, np.int32)] * len(texts)
        idx = [i for i, t in enumerate(texts) if t]
        if not idx:
            return out
        enc = _encoder(self.kind, self.data, self.pattern, tuple(sorted(self.specials.items())))
        # A few hundred documents at a time: both libraries return Python lists of ints
        # (~36 bytes a token), so a whole 64 MB task at once would cost gigabytes.
        for lo in range(0, len(idx), ENCODE_BATCH):
            part = idx[lo : lo + ENCODE_BATCH]
            if self.kind == "tiktoken":
                ids = enc.encode_ordinary_batch([texts[i] for i in part])
            else:
                ids = [e.ids for e in enc.encode_batch([texts[i] for i in part], add_special_tokens=False)]
            for i, x in zip(part, ids, strict=True):
                out[i] = np.asarray(x, np.int32)
        return out


@functools.lru_cache(maxsize=2)  # once per worker process, not once per batch
def _encoder(kind: str, data: bytes, pattern: str, specials: tuple) -> Any:
    if kind == "tiktoken":
        import tiktoken

        ranks = {base64.b64decode(tok): int(rank) for tok, rank in (ln.split() for ln in data.decode().splitlines() if ln)}
        return tiktoken.Encoding("corpus", pat_str=pattern, mergeable_ranks=ranks, special_tokens=dict(specials))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(data.decode("utf-8"))
    tok.encode_special_tokens = True  # "<|eos|>" typed in a document stays text
    return tok


def tiktoken_pattern(pattern: str) -> str:
    """A preset name (r50k_base, p50k_base, gpt2: GPT-2's split regex) or the regex itself."""
    if pattern in ("r50k_base", "p50k_base", "gpt2"):
        from tiktoken_ext.openai_public import r50k_pat_str

        return r50k_pat_str
    return pattern


def train_bpe(texts: Iterable[str], vocab_size: int) -> TextTokenizer:
    """Byte-level BPE on ``texts`` (deterministic; checked across runs and thread counts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BPE_SPECIALS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _hf(tok.to_str().encode("utf-8"), BPE_SPECIALS, "bpe", None, "text_tokenizer", vocab_size)


def _hf(data: bytes, names: dict[str, str], kind: str, file: Any, where: str, declared: int) -> TextTokenizer:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises its own exception types
        raise ConfigError(file, f"{where}.file", f"not a Hugging Face tokenizer.json ({e})") from e
    ids = {}
    for key, token in names.items():
        if not token:
            raise ConfigError(file, f"{where}.{key}", "required for a pretrained tokenizer (the token's string)")
        ids[key] = tok.token_to_id(token)
        if ids[key] is None:
            raise ConfigError(file, f"{where}.{key}", f"{token!r} is not in the tokenizer's vocabulary")
    size = max(tok.get_vocab_size(with_added_tokens=True), declared if kind == "bpe" else 0)
    return TextTokenizer(kind, data, ids["bos_token"], ids["eos_token"], ids["pad_token"], size)


def load_pretrained(cfg: Any, mixture_path: str | Path) -> TextTokenizer:
    """The tokenizer named by ``cfg`` (``kind`` hf/tiktoken with ``file``, or ``reuse``)."""
    base = Path(mixture_path).resolve().parent
    where = "text_tokenizer"
    if cfg.reuse:
        path = base / cfg.reuse
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(mixture_path, f"{where}.reuse", f"{path} does not exist")
        tok = _hf(path.read_bytes(), BPE_SPECIALS, "bpe", mixture_path, where, cfg.vocab_size)
        if tok.vocab_size > cfg.vocab_size:
            raise ConfigError(mixture_path, f"{where}.vocab_size",
                              f"{cfg.vocab_size} < the reused tokenizer's {tok.vocab_size} ids ({path})")  # fmt: skip
        return tok
    path = base / cfg.file
    if not cfg.file or not path.is_file():
        raise ConfigError(mixture_path, f"{where}.file", f"{path} does not exist" if cfg.file else "required")
    names = {k: getattr(cfg, k) for k in BPE_SPECIALS}
    if cfg.kind == "hf":
        return _hf(path.read_bytes(), names, "hf", mixture_path, where, 0)
    return _tiktoken(path.read_bytes(), cfg, names, mixture_path)


def _tiktoken(data: bytes, cfg: Any, names: dict[str, str], file: Any) -> TextTokenizer:
    where = "text_tokenizer"
    if not cfg.pattern:
        raise ConfigError(file, f"{where}.pattern", "required for a tiktoken file (a preset name or a regex)")
    pattern = tiktoken_pattern(cfg.pattern)
    try:
        n_ranks = sum(1 for ln in data.decode().splitlines() if ln.strip())
        _encoder("tiktoken", data, pattern, tuple(sorted(cfg.special_tokens.items())))
    except Exception as e:  # noqa: BLE001 - bad base64, bad regex, overlapping ids
        raise ConfigError(file, f"{where}.file", f"not a usable tiktoken BPE file ({type(e).__name__}: {e})") from e
    ids = {}
    for key, token in names.items():
        if token not in cfg.special_tokens:
            raise ConfigError(file, f"{where}.{key}", f"{token!r} is not one of special_tokens {sorted(cfg.special_tokens)}")
        ids[key] = cfg.special_tokens[token]
    size = max([n_ranks - 1, *cfg.special_tokens.values()]) + 1
    return TextTokenizer("tiktoken", data, ids["bos_token"], ids["eos_token"], ids["pad_token"], size,
                         pattern, dict(cfg.special_tokens))  # fmt: skip


def manifest_entry(tok: TextTokenizer, cfg: Any) -> dict[str, Any]:
    """``tokenizers.text`` of the manifest (the trainer reads vocab_size and the ids)."""
    import hashlib

    entry = {"name": {"bpe": "bpe-bytelevel (HF tokenizers, trained)", "hf": "hf tokenizer.json",
                      "tiktoken": "tiktoken BPE"}[tok.kind],  # fmt: skip
             "kind": tok.kind, "vocab_size": tok.vocab_size, "file": tok.file,
             "sha256": hashlib.sha256(tok.data).hexdigest(), "max_tokens": cfg.max_tokens, "dtype": "int32",
             "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id, "packed": cfg.pack}  # fmt: skip
    if tok.kind == "tiktoken":
        entry.update(pattern=tok.pattern, special_tokens=json.loads(json.dumps(tok.specials)))
    return entry


def from_corpus(corpus_dir: str | Path) -> TextTokenizer:
    """The text tokenizer a built corpus records (its file and ``tokenizers.text``): what
    a trainer or an evaluation needs to encode text the way the corpus did."""
    from ogi_ray.corpus import fsio
    from ogi_ray.corpus.manifest import load_manifest

    t = load_manifest(corpus_dir)["tokenizers"]["text"]
    data = fsio.read_bytes(fsio.join(fsio.absolute(corpus_dir), t["file"]))
    return TextTokenizer(t.get("kind", "bpe"), data, t["bos_id"], t["eos_id"], t["pad_id"], t["vocab_size"],
                         t.get("pattern", ""), dict(t.get("special_tokens", {})))  # fmt: skip
