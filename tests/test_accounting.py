"""Token accounting true to what the model is fed: the launch's exact count from the
manifest's length histograms, its refusal naming the source and modality, and the
trainer's per-step count (train/accounting.py). Expected values are worked by hand."""

from __future__ import annotations

import pytest

from ogi_ray.config import ConfigError
from ogi_ray.train.accounting import (
    Consumption,
    check_shares,
    consumed_shares,
    share_gaps,
    target_shares,
)

SLOTS = {"text": 64, "image": 16, "video": 64, "audio": 32, "proprio": 16, "action": 16}


def manifest(**limits) -> dict:
    """Two sources: web (text rows of 128, 128 and 64 tokens) and photos (2 rows of 16
    patches + 10 caption tokens); rates text 1, image 0.5."""
    lim = {"max_tokens": 128, "max_tubelets": 64, "max_frames": 32, "max_steps": 16, **limits}
    return {
        "name": "m", "exchange_rates": {"text": 1.0, "image": 0.5},
        "tokenizers": {"text": {"max_tokens": lim["max_tokens"]}, "image": {"size": 32, "patch": 8},
                       "video": {"max_tubelets": lim["max_tubelets"]}, "audio": {"max_frames": lim["max_frames"]},
                       "proprio": {"max_steps": lim["max_steps"]}, "action": {"max_steps": lim["max_steps"]}},
        "sources": [
            {"name": "web", "tokens_by_modality": {"text": 320}, "token_lengths": {"text": {"64": 1, "128": 2}}},
            {"name": "photos", "tokens_by_modality": {"text": 20, "image": 32},
             "token_lengths": {"text": {"10": 2}, "image": {"16": 2}}},
        ],
    }  # fmt: skip


def test_target_and_consumed_shares_by_hand():
    m = manifest()
    # Effective: web text 320, photos text 20, image 32 × 0.5 = 16; total 356.
    t = target_shares(m)
    assert t[("web", "text")] == pytest.approx(320 / 356) and t[("photos", "image")] == pytest.approx(16 / 356)
    # 64 text slots: web is fed 64 of each row = 192; photos unchanged; total 228.
    c = consumed_shares(m, SLOTS)
    assert c[("web", "text")] == pytest.approx(192 / 228)
    assert c[("photos", "text")] == pytest.approx(20 / 228) and c[("photos", "image")] == pytest.approx(16 / 228)


def test_no_cut_needs_no_histogram_and_a_cut_is_refused_naming_source_and_modality():
    m = manifest(max_tokens=64)  # rows never exceed the slots: shares are the manifest's
    for s in m["sources"]:
        del s["token_lengths"]
    assert set(share_gaps(m, SLOTS).values()) == {0.0}
    assert check_shares(m, SLOTS, 0.0, "data.corpus c") == 0.0
    m = manifest()
    gap = 100 * (16 / 228 - 16 / 356)  # photos/image gains the most share: +2.52 pp
    with pytest.raises(ConfigError) as e:
        check_shares(m, SLOTS, 0.0, "data.corpus c")
    assert e.value.field == "data.accept_share_difference_pp"
    msg = str(e.value)
    assert "source 'web', modality text" in msg and "text 64 of 128" in msg
    # The largest gap is web's text (-5.64 pp); accepting it launches and reports it.
    worst = 100 * abs(192 / 228 - 320 / 356)
    assert f"{worst:.2f}" in msg and worst > gap
    assert check_shares(m, SLOTS, 5.7, "data.corpus c") == pytest.approx(worst)


def test_an_old_manifest_without_lengths_is_named_when_rows_are_cut():
    m = manifest()
    del m["sources"][0]["token_lengths"]
    with pytest.raises(ConfigError, match="no token_lengths.*rebuild"):
        check_shares(m, SLOTS, 0.0, "data.corpus c")


def test_consumption_counts_raw_and_fed_per_source_and_modality():
    acc = Consumption.of(manifest())
    assert acc.sources == ["photos", "web"]
    rows = {"source": ["web", "photos", "web"], "tokens_text": [128, 10, 64], "tokens_image": [0, 16, 0],
            "tokens_video": [0] * 3, "tokens_audio": [0] * 3, "tokens_proprio": [0] * 3, "tokens_action": [0] * 3}  # fmt: skip
    v = acc.count(rows, SLOTS)
    acc.add_vector(v)
    acc.add_vector(v)  # a second step of the same rows (e.g. summed over two dp ranks)
    assert acc.raw == {"web": {"text": 384.0}, "photos": {"text": 20.0, "image": 32.0}}
    assert acc.fed == {"web": {"text": 256.0}, "photos": {"text": 20.0, "image": 32.0}}
    out = acc.metrics()
    # Fed effective: web 256, photos 20 + 16 = 36.
    assert out["share/web"] == pytest.approx(256 / 292) and out["share/photos"] == pytest.approx(36 / 292)
    assert out["share_target/web"] == pytest.approx(320 / 356)
    assert (out["tokens_fed/text"], out["tokens_raw/text"]) == (276.0, 404.0)
    again = Consumption.of(manifest())
    again.load_state_dict(acc.state_dict())
    assert again.metrics() == out
