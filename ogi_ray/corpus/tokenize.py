"""Per-modality tokenizers: raw samples → token rows with raw and effective counts.

    RawSample ─► text:    byte-level BPE ids           (n_text tokens)
               ─► image:   resize S×S, P×P RGB patches  (n = (S/P)², each 3·P² uint8)
               ─► video:   tubelets of F frames × P×P   (n = T/F · (S/P)², each 3·F·P² uint8)
               ─► audio:   frames of K samples @16 kHz  (n = ⌈len/K⌉, each K float32)
               ─► proprio/action: one token per timestep (float32 vectors)

A long document becomes several rows (text chunks of ``max_tokens``; video and
embodied samples chunked in time); one row is the unit the mixer counts and the trainer
reads. ``effective_tokens`` = Σ_modality count × exchange rate (DESIGN decision 1).

The BPE is trained on the corpus' own text (HF ``tokenizers``; its training was checked
to be deterministic across runs and thread counts) and its JSON is hashed into the
manifest, so a tokenizer change is a different corpus.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ogi_ray.corpus.config import MODALITIES, PatchConfig, TextTokenizerConfig

PAD, EOS = "<|pad|>", "<|eos|>"
PAD_ID, EOS_ID = 0, 1


def train_bpe(texts: Iterable[str], cfg: TextTokenizerConfig) -> str:
    """Train a byte-level BPE on ``texts``; returns the tokenizer JSON (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=[PAD, EOS],  # ids 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


def load_bpe(tokenizer_json: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
                raise ValueError(
                    f"source {source!r}, sample {sample.get('doc_id')!r}: field {key!r} "
                    "contains NaN or inf"
                )


def raw_hash(sample: dict) -> str:
    """Content hash of a raw sample (all fields, canonical order): the input fingerprint."""
    h = hashlib.sha256()
    for key in sorted(sample):
        v = sample[key]
        h.update(key.encode() + b"\0")
        if isinstance(v, np.ndarray):
            h.update(str(v.dtype).encode() + str(v.shape).encode() + np.ascontiguousarray(v).tobytes())
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
    }
    for m in MODALITIES:
        row[f"tokens_{m}"] = 0
    return row


def tokenize_sample(
    sample: dict,
    *,
    source: str,
    bpe: Any,
    text_cfg: TextTokenizerConfig,
    patch_cfg: PatchConfig,
    rates: dict[str, float],
) -> Iterator[dict[str, Any]]:
    """Yield the token rows of one raw sample (see module docstring for the layout)."""
    _check_finite(sample, source)
    text_ids = np.zeros(0, np.int32)
    if sample.get("text"):
        ids = bpe.encode(sample["text"]).ids + [EOS_ID]
        text_ids = np.asarray(ids, np.int32)

    # Time-chunked modalities: split into pieces; text rides on the first piece only
    # (a caption describes the clip) unless the sample is text-only.
    pieces: list[dict[str, Any]] = []
    if sample.get("image") is not None:
        pieces.append({"image_patches": image_patches(sample["image"], patch_cfg)})
    if sample.get("video") is not None:
        tub = video_tubelets(sample["video"], patch_cfg)
        per_frame_group = (patch_cfg.size // patch_cfg.patch) ** 2
        step = max(per_frame_group, (patch_cfg.max_tubelets // per_frame_group) * per_frame_group)
        for i in range(0, max(len(tub), 1), step):
            pieces.append({"video_tubelets": tub[i : i + step]})
    if sample.get("proprio") is not None or sample.get("action") is not None:
        n = len(sample.get("proprio") if sample.get("proprio") is not None else sample["action"])
        for i in range(0, n, patch_cfg.max_steps):
            piece: dict[str, Any] = {}
            for key in ("proprio", "action"):
                if sample.get(key) is not None:
                    piece[key] = np.asarray(sample[key][i : i + patch_cfg.max_steps], np.float32)
            if pieces and "video_tubelets" in pieces[-1] and len(pieces) == 1:
                pieces[0].update(piece)  # short episode: one row holds frames and steps
            else:
                pieces.append(piece)
    if sample.get("audio") is not None:
        frames = audio_frames(sample["audio"], int(sample.get("audio_rate", patch_cfg.audio_rate)), patch_cfg)
        chunks = [frames[i : i + patch_cfg.max_audio_frames] for i in range(0, len(frames), patch_cfg.max_audio_frames)]
        for j, ch in enumerate(chunks or [frames]):
            if j < len(pieces):
                pieces[j]["audio_frames"] = ch
            else:
                pieces.append({"audio_frames": ch})

    if not pieces:  # text only: chunk into rows of max_tokens
        m = text_cfg.max_tokens
        pieces = [{"text_tokens": text_ids[i : i + m]} for i in range(0, len(text_ids), m)]
    else:
        pieces[0]["text_tokens"] = text_ids[: text_cfg.max_tokens]

    rhash = raw_hash(sample)
    for j, piece in enumerate(pieces):
        row = empty_row()
        row.update(source=source, doc_id=str(sample["doc_id"]), chunk=j, raw_hash=rhash)
        if "text_tokens" in piece:
            row["text_tokens"] = np.asarray(piece["text_tokens"], np.int32)
            row["tokens_text"] = len(piece["text_tokens"])
        for key, m in (("image_patches", "image"), ("video_tubelets", "video"), ("audio_frames", "audio")):
            if key in piece:
                row[key] = np.ascontiguousarray(piece[key]).tobytes()
                row[f"tokens_{m}"] = len(piece[key])
        for key in ("proprio", "action"):
            if key in piece:
                arr = piece[key]  # (T, dim) float32
                row[key] = arr.tobytes()
                row[f"{key}_dim"] = int(arr.shape[1]) if arr.ndim == 2 else 1
                row[f"tokens_{key}"] = len(arr)
        present = [m for m in MODALITIES if row[f"tokens_{m}"] > 0]
        if not present:
            continue
        row["modality"] = "+".join(present)
        row["effective_tokens"] = float(sum(row[f"tokens_{m}"] * rates[m] for m in present))
        yield row
