"""The rates file: sealed by its hash; a wrong hash, a negative rate or a missing modality
is rejected naming the file and the field; a mixture pins it by hash and `ogi plan
--mixture` uses its rates."""

import json
from pathlib import Path

import pytest
import yaml

from ogi_ray.config import ConfigError
from ogi_ray.corpus.rates_file import load_rates_file, mixture_rates, rates_hash, write_rates_file
from ogi_ray.scaling.cli import register
from ogi_ray.scaling.tokens import load_mixture, token_budget

RATES = {"text": 1.0, "image": 0.42, "video": 0.21, "audio": 0.08, "proprio": 0.1, "action": 0.2}


def body() -> dict:
    return {
        "name": "t", "unit": "text", "modalities": list(RATES), "rates": dict(RATES),
        "intervals": {m: [r * 0.8, r * 1.2] if m != "text" else [1.0, 1.0] for m, r in RATES.items()},
        "confidence": 0.95, "metric": {"name": "mean_normalised_heldout_loss"},
        "trials": [{"proxy": "proxy-00", "metric": 1.0}],
    }  # fmt: skip


def resealed(path: Path, edit) -> Path:
    """Edit the document and write it back with a correct hash (so only the edit is wrong)."""
    doc = json.loads(path.read_text())
    edit(doc)
    doc["sha256"] = rates_hash(doc)
    path.write_text(json.dumps(doc))
    return path


def test_round_trip_and_hash(tmp_path):
    doc = write_rates_file(tmp_path / "r.json", body())
    rf = load_rates_file(tmp_path / "r.json")
    assert rf.rates == RATES and rf.sha256 == doc["sha256"] and rf.intervals["image"] == (0.42 * 0.8, 0.42 * 1.2)
    # The hash is over the content: the same body gives the same hash, another body another.
    assert write_rates_file(tmp_path / "again.json", body())["sha256"] == doc["sha256"]
    other = body()
    other["rates"]["image"] = 0.43
    assert write_rates_file(tmp_path / "other.json", other)["sha256"] != doc["sha256"]


def test_edited_file_fails_its_hash(tmp_path):
    p = tmp_path / "r.json"
    write_rates_file(p, body())
    doc = json.loads(p.read_text())
    doc["rates"]["image"] = 0.9  # hand-edited after measuring
    p.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as e:
        load_rates_file(p)
    assert e.value.file == str(p) and e.value.field == "sha256"


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["rates"].__setitem__("video", -0.2), "rates.video"),
        (lambda d: d["rates"].__setitem__("audio", 0.0), "rates.audio"),
        (lambda d: d["rates"].pop("proprio"), "rates.proprio"),
        (lambda d: d["intervals"].pop("image"), "intervals.image"),
        (lambda d: d["intervals"].__setitem__("image", [0.5, 0.4]), "intervals.image"),
        (lambda d: d["rates"].__setitem__("text", 2.0), "rates.text"),
        (lambda d: d["modalities"].append("smell"), "modalities[6]"),
        (lambda d: d.__setitem__("schema", "ogi-rates/0"), "schema"),
    ],
)
def test_bad_content_names_file_and_field(tmp_path, edit, field):
    p = tmp_path / "r.json"
    write_rates_file(p, body())
    resealed(p, edit)
    with pytest.raises(ConfigError) as e:
        load_rates_file(p)
    assert (e.value.file, e.value.field) == (str(p), field), str(e.value)


def test_a_mixture_needing_an_unmeasured_modality_is_rejected(tmp_path):
    p = tmp_path / "r.json"
    write_rates_file(p, body())
    resealed(p, lambda d: (d["modalities"].remove("audio"), d["rates"].pop("audio"), d["intervals"].pop("audio")))
    assert "audio" not in load_rates_file(p).rates
    with pytest.raises(ConfigError) as e:
        load_rates_file(p, require=["text", "audio"])
    assert (e.value.file, e.value.field) == (str(p), "rates.audio")


def mixture(tmp_path: Path, ref) -> Path:
    m = {"name": "m", "exchange_rates_file": ref, "sources": [
        {"name": "web", "share": 0.7, "modalities": ["text"]},
        {"name": "photos", "share": 0.3, "modalities": ["text", "image"]}]}  # fmt: skip
    p = tmp_path / "mix.yaml"
    p.write_text(yaml.safe_dump(m))
    return p


def test_mixture_pins_the_file_and_the_planner_uses_its_rates(tmp_path):
    (tmp_path / "rates").mkdir()
    doc = write_rates_file(tmp_path / "rates" / "r.json", body())
    mix = mixture(tmp_path, {"path": "rates/r.json", "sha256": doc["sha256"]})
    rates, source = mixture_rates(mix, yaml.safe_load(mix.read_text()))
    assert rates == RATES and source == {"kind": "measured", "file": "rates/r.json", "sha256": doc["sha256"], "name": "t"}
    budget = token_budget(load_mixture(mix), 1e9)
    assert budget["exchange_rates"] == RATES and budget["exchange_rates_source"]["sha256"] == doc["sha256"]
    # photos' 0.3 of D split equally between text and image: image raw = 0.15e9 / 0.42.
    assert budget["by_source"]["photos"]["raw_by_modality"]["image"] == pytest.approx(0.15e9 / 0.42)


def test_mixture_pinning_another_hash_or_both_rate_keys_is_rejected(tmp_path):
    write_rates_file(tmp_path / "r.json", body())
    mix = mixture(tmp_path, {"path": "r.json", "sha256": "0" * 64})
    with pytest.raises(ConfigError) as e:
        load_mixture(mix)
    assert (e.value.file, e.value.field) == (str(mix), "exchange_rates_file.sha256")
    both = yaml.safe_load(mix.read_text())
    both["exchange_rates"] = {"text": 1.0, "image": 0.5}
    mix.write_text(yaml.safe_dump(both))
    with pytest.raises(ConfigError) as e:
        load_mixture(mix)
    assert e.value.field == "exchange_rates_file"


def test_ogi_plan_rates_overrides_a_mixtures_configured_rates(tmp_path, capsys):
    import argparse

    doc = write_rates_file(tmp_path / "r.json", body())
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan", "--compute", "1e20", "--mixture", str(root / "datasets" / "mixture.yaml"),
                              "--rates", str(tmp_path / "r.json"), "--json"])  # fmt: skip
    assert args.func(args) == 0
    plan = json.loads(capsys.readouterr().out)
    budget = plan["token_budget"]
    assert budget["exchange_rates"] == RATES
    assert budget["exchange_rates_source"] == {"kind": "measured", "file": str(tmp_path / "r.json"),
                                               "sha256": doc["sha256"], "name": "t"}  # fmt: skip
    # Without --rates the shipped mixture's hand-set rates are used and said to be.
    args = parser.parse_args(["plan", "--compute", "1e20", "--mixture", str(root / "datasets" / "mixture.yaml"), "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["token_budget"]["exchange_rates_source"] == {"kind": "configured"}


def test_ogi_rates_show_verifies_and_names_the_bad_field(tmp_path, capsys):
    import argparse

    from ogi_ray.rates.cli import register as register_rates

    parser = argparse.ArgumentParser()
    register_rates(parser.add_subparsers(dest="command"))
    p = tmp_path / "r.json"
    doc = write_rates_file(p, {**body(), "modalities": ["text", "image"], "rates": {"text": 1.0, "image": 0.42},
                               "intervals": {"text": [1.0, 1.0], "image": [0.3, 0.5]}})  # fmt: skip
    bad = json.loads(p.read_text())
    bad["rates"]["image"] = float("nan")  # json writes NaN; no canonical hash exists for it
    p.write_text(json.dumps(bad))
    args = parser.parse_args(["rates", "show", str(p)])
    assert args.func(args) == 2
    assert f"{p}: rates.image: must be finite" in capsys.readouterr().err
    write_rates_file(p, {**body(), "modalities": ["text", "image"], "rates": {"text": 1.0, "image": 0.42},
                         "intervals": {"text": [1.0, 1.0], "image": [0.3, 0.5]}})  # fmt: skip
    args = parser.parse_args(["rates", "show", str(p)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"sha256 {doc['sha256']} (verified)" in out and "image" in out
