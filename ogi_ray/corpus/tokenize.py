"""Per-modality tokenizers: raw samples → token rows with raw and effective counts.

    RawSample ─► text:    the corpus tokenizer's ids + EOS (text_tokenizer.py)
               ─► image:   resize S×S, P×P RGB patches    (n = (S/P)², each 3·P² uint8)
               ─► video:   tubelets of F frames × P×P     (n = T/F · (S/P)², each 3·F·P² uint8)
               ─► audio:   frames of K samples @16 kHz    (n = ⌈len/K⌉, each K float32)
               ─► proprio/action: one token per timestep  (float32 vectors)

A sample becomes one or more rows, the unit the mixer counts and the trainer reads:

* text only: packed (``pack_rows``): documents joined with EOS into rows of exactly
  ``max_tokens`` tokens (the last row of a Ray task's stream may be shorter), with the
  document lengths of each row in ``text_doc_lens``; or, unpacked, each document's
  chunks of ``max_tokens`` tokens;
* an image (+ caption): one row;
* time series (video, audio, proprio, action): cut along time into rows that respect
  every per-row limit (``max_tubelets``, ``max_steps``, ``max_audio_frames``). The cuts
  are shared, so a row holds the frames, states, actions and sound of the same span
  (audio is mapped to frames by time: a builder's audio spans its video); audio left
  over a limit goes to continuation rows right after. A caption rides on the first row.

``effective_tokens`` = Σ_modality count × exchange rate (DESIGN decision 1).

``media_rows`` tokenizes everything but text; ``text_rows`` adds a row's text ids and its
counts; ``pack_rows`` packs text-only documents. ``tokenize_sample`` runs the unpacked
path for one sample (tests, the benchmark's plain loop).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ogi_ray.corpus.config import MODALITIES, PatchConfig, TextTokenizerConfig
from ogi_ray.corpus.manifest import CorpusError

_UINT8 = ("image_patches", "video_tubelets")
_COUNTED = (("image_patches", "image"), ("video_tubelets", "video"), ("audio_frames", "audio"),
            ("proprio", "proprio"), ("action", "action"))  # fmt: skip


class SourceDataError(CorpusError):
    """A source's input is unusable (NaN, unreadable item, ...): names source, item, field,
    and the mixture file once the build knows it."""

    def __init__(
        self, source: str, item: str | None, field: str | None, message: str,
        file: str | None = None, row: str | None = None,
    ) -> None:  # fmt: skip
        self.source, self.item, self.field, self.message = source, item, field, message
        self.file = str(file) if file is not None else None
        self.row = row
        where = (f"{self.file}: " if self.file else "") + f"source {source!r}"
        where += f", item {item!r}" if item is not None else ""
        where += f", {row}" if row else ""
        where += f", field {field!r}" if field else ""
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple:  # Ray pickles task errors: keep every attribute
        return (type(self), (self.source, self.item, self.field, self.message, self.file, self.row))


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 → (size, size, 3) uint8, bilinear (Pillow, deterministic)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def image_patches(image: np.ndarray, cfg: PatchConfig) -> np.ndarray:
    """(H, W, 3) uint8 → (n_patches, P·P·3) uint8, row-major over the patch grid."""
    im = _resize(image, cfg.size)
    g, p = cfg.size // cfg.patch, cfg.patch
    # (g, p, g, p, 3) → (g, g, p, p, 3) → (g·g, p·p·3)
    return im.reshape(g, p, g, p, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, p * p * 3)


def video_tubelets(video: np.ndarray, cfg: PatchConfig) -> np.ndarray:
    """(T, H, W, 3) uint8 → (T//F · g², F·P·P·3) uint8; trailing frames < F are dropped."""
    f, p, g = cfg.frames_per_tubelet, cfg.patch, cfg.size // cfg.patch
    t = (video.shape[0] // f) * f
    if t == 0:
        return np.zeros((0, f * p * p * 3), np.uint8)
    frames = np.stack([_resize(fr, cfg.size) for fr in video[:t]])  # (t, S, S, 3)
    x = frames.reshape(t // f, f, g, p, g, p, 3).transpose(0, 2, 4, 1, 3, 5, 6)
    return np.ascontiguousarray(x.reshape((t // f) * g * g, f * p * p * 3))


def audio_frames(audio: np.ndarray, rate: int, cfg: PatchConfig) -> np.ndarray:
    """1-D float samples at ``rate`` → (n_frames, K) float32 at cfg.audio_rate, zero-padded."""
    a = np.asarray(audio, dtype=np.float64)
    if rate != cfg.audio_rate and a.size:
        n = max(1, round(a.size * cfg.audio_rate / rate))
        a = np.interp(np.linspace(0, a.size - 1, n), np.arange(a.size), a)
    k = cfg.audio_frame
    n = math.ceil(a.size / k)
    out = np.zeros(n * k, np.float32)
    out[: a.size] = a
    return out.reshape(n, k)


def _check_finite(sample: dict, source: str) -> None:
    for key in ("image", "video", "audio", "proprio", "action"):
        v = sample.get(key)
        if v is not None and np.issubdtype(np.asarray(v).dtype, np.floating):
            if not np.isfinite(v).all():
                raise SourceDataError(
                    source, None, key, f"sample {sample.get('doc_id')!r} contains NaN or inf"
                )


def raw_hash(sample: dict) -> str:
    """Content hash of a raw sample (all fields, canonical order): the input fingerprint."""
    h = hashlib.sha256()
    for key in sorted(sample):
        v = sample[key]
        h.update(key.encode() + b"\0")
        if isinstance(v, np.ndarray):
            h.update(str(v.dtype).encode() + str(v.shape).encode())
            h.update(np.ascontiguousarray(v).tobytes())
        else:
            h.update(repr(v).encode("utf-8"))
    return h.hexdigest()


def empty_row() -> dict[str, Any]:
    row: dict[str, Any] = {
        "text_tokens": np.zeros(0, np.int32),
        "image_patches": b"",
        "video_tubelets": b"",
        "audio_frames": b"",
        "proprio": b"",
        "action": b"",
        "proprio_dim": 0,
        "action_dim": 0,
        "text_doc_lens": b"",
        "meta": "",
    }
    for m in MODALITIES:
        row[f"tokens_{m}"] = 0
    return row


def _time_pieces(sample: dict, cfg: PatchConfig) -> list[dict[str, np.ndarray]]:
    """Cut video / proprio / action / audio along time into rows within every limit."""
    video = sample.get("video")
    steps = {k: np.asarray(sample[k], np.float32) for k in ("proprio", "action")
             if sample.get(k) is not None}  # fmt: skip
    for k, v in steps.items():  # a per-step vector: (T,) means one value per step
        steps[k] = v.reshape(len(v), -1)
    aud = None
    if sample.get("audio") is not None:
        aud = audio_frames(sample["audio"], int(sample.get("audio_rate", cfg.audio_rate)), cfg)
    if video is None and not steps:  # audio only: plain chunks
        a = aud if aud is not None else np.zeros((0, cfg.audio_frame), np.float32)
        return [{"audio_frames": a[i : i + cfg.max_audio_frames]}
                for i in range(0, len(a), cfg.max_audio_frames)]  # fmt: skip

    # The time axis: video frames, grouped F at a time (one tubelet layer); else steps.
    if video is not None:
        tub, f = video_tubelets(video, cfg), cfg.frames_per_tubelet
        g2 = (cfg.size // cfg.patch) ** 2
        n_t, n_groups = len(video), len(tub) // g2
        per = max(1, cfg.max_tubelets // g2)
        if steps:  # the last row also takes up to F-1 trailing steps: leave room for them
            per = min(per, max(1, (cfg.max_steps - f + 1) // f))
    else:
        tub, f, g2 = None, 1, 0
        n_t = n_groups = len(next(iter(steps.values())))
        per = cfg.max_steps
    if aud is not None and len(aud):  # audio frames per group, so rows stay within the limit
        per = min(per, max(1, int(cfg.max_audio_frames * n_t // (f * len(aud)))))
    pieces: list[dict[str, np.ndarray]] = []
    starts = list(range(0, max(n_groups, 1), per))
    for j, g0 in enumerate(starts):
        last = j == len(starts) - 1
        g1 = n_groups if last else g0 + per
        t0, t1 = g0 * f, (n_t if last else g1 * f)
        piece: dict[str, np.ndarray] = {}
        if tub is not None:
            piece["video_tubelets"] = tub[g0 * g2 : g1 * g2]
        for k, v in steps.items():
            piece[k] = v[t0:t1]
        extra = []
        if aud is not None and n_t:
            lo = t0 * len(aud) // n_t
            hi = len(aud) if last else t1 * len(aud) // n_t
            a, m = aud[lo:hi], cfg.max_audio_frames
            piece["audio_frames"] = a[:m]
            extra = [{"audio_frames": a[i : i + m]} for i in range(m, len(a), m)]
        pieces += [piece, *extra]
    return pieces


def media_rows(sample: dict, *, source: str, patch_cfg: PatchConfig) -> list[dict[str, Any]]:
    """Stage 1: one raw sample → rows with every non-text modality tokenized.

    Each row carries ``text`` (the caption on the first row, '' after; the whole text
    for a text-only sample, marked ``text_only``) for ``text_rows`` to encode.
    """
    _check_finite(sample, source)
    pieces: list[dict[str, np.ndarray]] = []
    if sample.get("image") is not None:
        pieces.append({"image_patches": image_patches(sample["image"], patch_cfg)})
    if any(sample.get(k) is not None for k in ("video", "audio", "proprio", "action")):
        pieces += _time_pieces(sample, patch_cfg)
    text = sample.get("text") or ""
    text_only = not pieces
    if text_only:
        pieces = [{}]
    rhash = raw_hash(sample)
    rows = []
    for j, piece in enumerate(pieces):
        row = empty_row()
        row.update(source=source, doc_id=str(sample["doc_id"]), chunk=j, raw_hash=rhash,
                   text=text if j == 0 else "", text_only=text_only)  # fmt: skip
        if j == 0 and sample.get("meta") is not None:
            row["meta"] = json.dumps(sample["meta"], sort_keys=True)
        for key, m in _COUNTED:
            if key in piece:
                # Explicit little-endian: the shard bytes are the same on every machine.
                arr = np.ascontiguousarray(piece[key], "u1" if key in _UINT8 else "<f4")
                row[key] = arr.tobytes()
                row[f"tokens_{m}"] = len(arr)
                if key in ("proprio", "action"):
                    row[f"{key}_dim"] = int(arr.shape[1])
        rows.append(row)
    return rows


def _finish(r: dict[str, Any], ids: np.ndarray, lens: list[int], rates: dict[str, float]) -> dict | None:
    """Set a row's text ids, document lengths (int32 LE), modality and counts."""
    r["text_tokens"] = np.asarray(ids, "<i4").tobytes()
    r["tokens_text"] = len(ids)
    r["text_doc_lens"] = np.asarray(lens, "<i4").tobytes()
    present = [x for x in MODALITIES if r[f"tokens_{x}"] > 0]
    if not present:
        return None
    r["modality"] = "+".join(present)
    r["effective_tokens"] = float(sum(r[f"tokens_{x}"] * rates[x] for x in present))
    return r


def text_rows(
    row: dict[str, Any], ids: np.ndarray, *, text_cfg: TextTokenizerConfig, rates: dict[str, float]
) -> list[dict[str, Any]]:
    """A ``media_rows`` row + its text's ids (EOS included) → final rows with counts.

    Unpacked text-only rows are split into chunks of ``max_tokens``; otherwise the text
    (a caption) is cut to ``max_tokens``. Rows with no tokens at all are dropped.
    """
    base = {k: v for k, v in row.items() if k not in ("text", "text_only")}
    m = text_cfg.max_tokens
    parts = [(i // m, ids[i : i + m]) for i in range(0, len(ids), m)] if row["text_only"] else [(row["chunk"], ids[:m])]
    out = []
    for chunk, piece in parts:
        r = _finish({**base, "chunk": chunk}, piece, [len(piece)] if len(piece) else [], rates)
        if r is not None:
            out.append(r)
    return out


def pack_rows(docs: list[dict[str, Any]], max_tokens: int, rates: dict[str, float]) -> list[dict[str, Any]]:
    """Text-only documents (``doc_id``, ``ids`` with EOS, ``raw_hash``, ``meta``), in order,
    joined into rows of ``max_tokens`` tokens; a document longer than the room left
    continues in the next row. Each row's ``text_doc_lens`` are the lengths of the
    document pieces it holds, in order; ``doc_id`` is its first piece's document;
    ``raw_hash`` covers every piece (document hash and offset); ``meta`` is the JSON list
    of the pieces' metadata when any document has some.
    """
    rows, cur, room = [], [], max_tokens
    pieces: list[list[tuple[dict, int, int]]] = []
    for d in docs:
        start, n = 0, len(d["ids"])
        while start < n:
            take = min(room, n - start)
            cur.append((d, start, take))
            start += take
            room -= take
            if room == 0:
                pieces.append(cur)
                cur, room = [], max_tokens
    if cur:
        pieces.append(cur)
    for j, row_pieces in enumerate(pieces):
        r = empty_row()
        h = hashlib.sha256()
        for d, start, take in row_pieces:
            h.update(f"{d['raw_hash']}:{start}:{take}\n".encode())
        ids = np.concatenate([d["ids"][s : s + t] for d, s, t in row_pieces])
        metas = [d.get("meta") for d, _, _ in row_pieces]
        r.update(doc_id=str(row_pieces[0][0]["doc_id"]), chunk=j, raw_hash=h.hexdigest(),
                 meta=json.dumps(metas, sort_keys=True) if any(m is not None for m in metas) else "")  # fmt: skip
        rows.append(_finish(r, ids, [t for _, _, t in row_pieces], rates))
    return rows


def tokenize_sample(
    sample: dict,
    *,
    source: str,
    tokenizer: Any,
    text_cfg: TextTokenizerConfig,
    patch_cfg: PatchConfig,
    rates: dict[str, float],
) -> Iterator[dict[str, Any]]:
    """The unpacked token rows of one raw sample (see module docstring for the layout)."""
    for row in media_rows(sample, source=source, patch_cfg=patch_cfg):
        ids = np.zeros(0, np.int32)
        if row["text"]:
            ids = np.append(tokenizer.encode_batch([row["text"]])[0], np.int32(tokenizer.eos_id))
        yield from text_rows(row, ids, text_cfg=text_cfg, rates=rates)
