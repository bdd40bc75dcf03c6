"""Corpus build on a real local Ray cluster, from real stdlib code and skimage photos,
and every kind of bad input: each error names the file and the field. Errors that need
no data are raised before Ray starts (test_corpus_cli.py checks that from the CLI)."""

import json
import os
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ogi_ray.config import ConfigError
from ogi_ray.corpus.build import build_corpus
from ogi_ray.corpus.config import PatchConfig, TextTokenizerConfig
from ogi_ray.corpus.manifest import CorpusError, seal, verify_corpus
from ogi_ray.corpus.passes import SHARD_SCHEMA
from ogi_ray.corpus.text_tokenizer import train_bpe
from ogi_ray.corpus.tokenize import SourceDataError, tokenize_sample

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CODE_FILES = ["bisect.py", "colorsys.py", "keyword.py", "reprlib.py", "this.py", "shlex.py"]


def mixture(tmp_path: Path, code_root: Path, **over) -> Path:
    m = {
        "name": "t", "seed": 3, "exchange_rates": {"text": 1.0, "image": 0.5},
        "text_tokenizer": {"vocab_size": 400, "train_chars": 200000, "max_tokens": 64},
        "patches": {"size": 32, "patch": 8}, "shard_rows": 40, "heldout_fraction": 0.35,
        "sources": [
            {"name": "code", "kind": "python_stdlib", "share": 0.6, "modalities": ["text"],
             "license": "PSF-2.0", "params": {"root": str(code_root)}},
            {"name": "photos", "kind": "skimage_captions", "share": 0.4,
             "modalities": ["text", "image"], "license": "CC0-1.0",
             "params": {"names": ["cat", "coffee", "rocket", "moon"], "views": 3}},
            # Its own share on top (as in datasets/mixture.yaml): excluded by the policy.
            {"name": "nc", "kind": "skimage_captions", "share": 0.1, "modalities": ["text", "image"],
             "license": "CC-BY-NC-4.0", "params": {"names": ["cat"], "views": 1}},
        ],
    }  # fmt: skip
    for k, v in over.items():
        m[k] = v
    p = tmp_path / "mix.yaml"
    p.write_text(yaml.safe_dump(m))
    return p


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    """A private builder cache for this module, set before Ray starts so that its workers
    inherit it (the NaN test plants a corrupted cache file there)."""
    old = os.environ.get("OGI_CACHE_DIR")
    os.environ["OGI_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield Path(os.environ["OGI_CACHE_DIR"])
    if old is None:
        os.environ.pop("OGI_CACHE_DIR", None)
    else:
        os.environ["OGI_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def code_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("stdlib")
    for f in CODE_FILES:
        shutil.copy(STDLIB / f, root / f)
    return root


@pytest.fixture(scope="module")
def built(ray_local, tmp_path_factory, code_root):
    tmp = tmp_path_factory.mktemp("build")
    mix = mixture(tmp, code_root)
    m = build_corpus(mix, tmp / "out")
    return tmp, mix, m


def _read(out: Path, entries: list, columns: list | None = None) -> dict:
    cols: dict = {}
    for s in entries:
        for k, v in pq.read_table(out / s["path"], columns=columns).to_pydict().items():
            cols.setdefault(k, []).extend(v)
    return cols


def test_manifest_shares_schema_and_packing(built):
    tmp, _, m = built
    out = tmp / "out"
    assert m == verify_corpus(out)
    assert m["manifest_hash"] == seal(m)["manifest_hash"]
    # Schema exactly as documented (docs/corpus.md); rows in global position order.
    table = pq.read_table(out / m["shards"][0]["path"])
    assert table.schema.remove_metadata() == pa.schema(sorted(SHARD_SCHEMA, key=lambda f: f.name))
    t = _read(out, m["shards"])
    assert t["position"] == list(range(m["total_rows"]))
    # Realised shares recomputed from the shards themselves, not from the manifest.
    rate = {"text": 1.0, "image": 0.5}
    eff: dict = {}
    for i, (src, e) in enumerate(zip(t["source"], t["effective_tokens"], strict=True)):
        eff[src] = eff.get(src, 0.0) + e
        assert e == pytest.approx(sum(t[f"tokens_{x}"][i] * rate[x] for x in t["modality"][i].split("+")))
    targets = {s["name"]: s["target_share"] for s in m["sources"]}
    for name, e in eff.items():
        assert abs(e / sum(eff.values()) - targets[name]) < 0.005
    # Code is packed: documents joined with EOS into rows of exactly max_tokens (64), the
    # last row of a task's stream shorter; text_doc_lens sum to the row's tokens.
    eos = m["tokenizers"]["text"]["eos_id"]
    code = [i for i, s in enumerate(t["source"]) if s == "code"]
    lens = [np.frombuffer(t["text_doc_lens"][i], "<i4") for i in code]
    assert all(int(x.sum()) == t["tokens_text"][i] for x, i in zip(lens, code, strict=True))
    assert sum(t["tokens_text"][i] == 64 for i in code) >= len(code) - 2
    assert any(len(x) > 1 for x in lens), "some row holds more than one document"
    ids = np.frombuffer(t["text_tokens"][code[0]], "<i4")
    assert ids[np.cumsum(lens[0])[:-1] - 1].tolist() == [eos] * (len(lens[0]) - 1)  # EOS ends each inner document
    # The gate: the NC source is listed with its reason and never reaches a shard.
    assert [e["name"] for e in m["excluded"]] == ["nc"] and "CC-BY-NC-4.0" in m["excluded"][0]["reason"]
    assert set(t["source"]) == {"code", "photos"}
    assert m["tokenizers"]["text"]["bos_id"] != eos and m["tokenizers"]["text"]["pad_id"] not in (eos,)


def test_heldout_documents_are_whole_and_one_byte_changes_the_hash(built, tmp_path, code_root):
    tmp, _, m = built
    out = tmp / "out"
    assert m["heldout_shards"], "a held-out split was requested"
    held, train = _read(out, m["heldout_shards"]), _read(out, m["shards"])
    assert held["position"] == list(range(len(held["position"]))) and set(held["repeat"]) == {0}
    docs = lambda t: {(s, d) for s, d, k in zip(t["source"], t["doc_id"], t["row_key"], strict=True) if "/pack/" not in k and "/heldout/" not in k}  # noqa: E731
    assert not docs(held) & docs(train)  # no unpacked document on both sides
    changed = tmp_path / "changed"
    shutil.copytree(code_root, changed)
    f = changed / "keyword.py"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] = ord("Z") if raw[len(raw) // 2] != ord("Z") else ord("Y")
    f.write_bytes(bytes(raw))
    other = build_corpus(mixture(tmp_path, changed), tmp_path / "other")
    assert other["manifest_hash"] != m["manifest_hash"]
    before = {s["name"]: s["input_hash"] for s in m["sources"]}
    after = {s["name"]: s["input_hash"] for s in other["sources"]}
    assert [n for n in before if before[n] != after[n]] == ["code"]


def test_corrupt_or_missing_shard_is_named(built, tmp_path):
    src, _, m = built
    out = tmp_path / "copy"
    shutil.copytree(src / "out", out)
    shard = out / m["shards"][0]["path"]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorpusError, match=m["shards"][0]["path"]):
        verify_corpus(out)
    shard.unlink()
    with pytest.raises(CorpusError, match="missing"):
        verify_corpus(out)
    man = json.loads((out / "manifest.json").read_text())
    man["seed"] = 99
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CorpusError, match="manifest_hash"):
        verify_corpus(out)


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda m: m["sources"][0].update(share=0.9), "sources"),
        (lambda m: m["sources"][0].update(kind="nope"), "sources[0].kind"),
        (lambda m: m["sources"][0].pop("license"), "sources[0].license"),
        (lambda m: m["sources"][0].update(license="PSF-2.0 ANDD MIT"), "sources[0].license"),
        (lambda m: m["sources"][2].update(license="CC-BY-NC-4.O"), "sources[2].license"),
        (lambda m: m["sources"][0].update(licence="MIT"), "sources[0].licence"),
        (lambda m: m["sources"][0]["params"].update(max_file=6), "sources[0].params.max_file"),
        (lambda m: m["sources"][0]["params"].update(max_files=0), "sources[0].params.max_files"),
        (lambda m: m["sources"][1]["params"].update(views="3"), "sources[1].params.views"),
        (lambda m: m["exchange_rates"].pop("image"), "exchange_rates"),
        (lambda m: m["sources"][1].update(modalities=["smell"]), "sources[1].modalities"),
        (lambda m: m["text_tokenizer"].update(kind="hf", file="nope.json"), "text_tokenizer.file"),
    ],
)  # fmt: skip
def test_bad_mixture_errors_name_file_and_field(tmp_path, code_root, change, field):
    m = yaml.safe_load(mixture(tmp_path, code_root).read_text())
    change(m)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(m))
    with pytest.raises(ConfigError) as e:
        build_corpus(p, tmp_path / "out")  # raised by prepare_build: Ray is never needed
    assert e.value.file == str(p) and e.value.field == field
    assert not (tmp_path / "out").exists()


def test_invalid_spdx_gives_the_parsers_message(tmp_path, code_root):
    m = yaml.safe_load(mixture(tmp_path, code_root).read_text())
    m["sources"][2]["license"] = "CC-BY-NC-4.O"  # a typo on the source with its own extra share
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(m))
    with pytest.raises(ConfigError, match="not a valid SPDX expression.*CC-BY-NC-4.O"):
        build_corpus(p, tmp_path / "out")


def test_malformed_yaml_and_empty_source(ray_local, tmp_path, code_root):
    p = tmp_path / "m.yaml"
    p.write_text("name: x\nsources: [\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        build_corpus(p, tmp_path / "out")
    empty = tmp_path / "empty_root"
    empty.mkdir()
    with pytest.raises(ConfigError) as e:
        build_corpus(mixture(tmp_path, empty), tmp_path / "out")
    assert e.value.field == "sources.code" and "empty" in e.value.message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_numeric_data_is_named(bad):
    sample = {"doc_id": "ep0", "proprio": np.array([[0.0, bad]], np.float32),
              "action": np.zeros((1, 2), np.float32)}  # fmt: skip
    with pytest.raises(SourceDataError, match="'proprio'.*NaN or inf") as e:
        list(tokenize_sample(sample, source="robot", tokenizer=None, text_cfg=TextTokenizerConfig(),
                             patch_cfg=PatchConfig(), rates={"proprio": 1.0, "action": 1.0}))
    assert e.value.field == "proprio" and e.value.source == "robot"
    assert train_bpe(["abc"], 300).eos_id == 1  # the trained BPE's specials are looked up


def test_nan_in_source_data_stops_the_build(ray_local, tmp_path, code_root, module_cache):
    """A real Meta-World rollout whose cached file got one NaN: the build names the
    mixture file, the source, the item and the field, and writes nothing."""
    from ogi_ray.corpus.sources import metaworld_demos as mw
    from ogi_ray.corpus.sources._cache import load_npz, save_npz

    params = {"tasks": ["reach-v3"], "seeds": 1, "max_steps": 6, "size": 32}
    typed = mw.Params(**params)
    list(mw.read("reach-v3:seed0", typed))  # renders into this module's cache
    path = mw.cache_path("reach-v3", 0, mw._settings(typed))
    ep = load_npz(path)
    ep["proprio"][3, 1] = np.nan
    save_npz(path, ep)
    m = yaml.safe_load(mixture(tmp_path, code_root).read_text())
    m["exchange_rates"].update(video=0.3, proprio=0.1, action=0.2)
    m["sources"][1] = {"name": "robot", "kind": "metaworld_demos", "share": 0.4,
                       "modalities": ["video", "proprio", "action", "text"], "license": "MIT",
                       "params": params}  # fmt: skip
    p = tmp_path / "nan.yaml"
    p.write_text(yaml.safe_dump(m))
    with pytest.raises(SourceDataError) as e:
        build_corpus(p, tmp_path / "out")
    assert (e.value.file, e.value.source, e.value.item) == (str(p), "robot", "reach-v3:seed0")
    assert str(p) in str(e.value) and "NaN" in str(e.value) and "proprio" in str(e.value)
    assert not any(x.name.startswith("out") for x in tmp_path.iterdir())


def test_unreadable_item_and_undeclared_modality_are_named(ray_local, tmp_path, code_root):
    root = tmp_path / "code"
    shutil.copytree(code_root, root)
    (root / "gone.py").symlink_to(tmp_path / "does-not-exist.py")  # listed, cannot be read
    with pytest.raises(SourceDataError) as e:
        build_corpus(mixture(tmp_path, root), tmp_path / "out")
    assert (e.value.source, e.value.item) == ("code", "gone.py")
    assert "FileNotFoundError" in e.value.message
    # Photos carry captions: declaring them image-only is an error naming the field.
    m = yaml.safe_load(mixture(tmp_path, code_root).read_text())
    m["sources"][1]["modalities"] = ["image"]
    p = tmp_path / "undeclared.yaml"
    p.write_text(yaml.safe_dump(m))
    with pytest.raises(SourceDataError) as e:
        build_corpus(p, tmp_path / "out")
    assert e.value.source == "photos" and "modalities" in str(e.value)
    assert "['text']" in e.value.message and e.value.file == str(p)
    assert not any(x.name.startswith("out") for x in tmp_path.iterdir())


def test_a_failed_rebuild_leaves_the_previous_corpus_and_foreign_files(built, tmp_path, monkeypatch):
    import ogi_ray.corpus.build as b

    src, mix, m = built
    out = tmp_path / "out"
    shutil.copytree(src / "out", out)
    (out / "notes.txt").write_text("mine")  # a file the build did not write
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def failing(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(b, "_manifest", failing)  # after the shards are written to staging
    with pytest.raises(OSError, match="disk full"):
        b.build_corpus(mix, out)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing staged is left
    monkeypatch.undo()
    # A previous corpus with one more shard than the new one: the stale shard goes, the
    # user's file stays, and the rebuilt corpus verifies.
    man = json.loads((out / "manifest.json").read_text())
    (out / "shards" / "part-00099.parquet").write_bytes(b"old")
    man["shards"].append({"path": "shards/part-00099.parquet", "sha256": "0" * 64, "rows": 1})
    (out / "manifest.json").write_text(json.dumps(man))
    again = b.build_corpus(mix, out)
    assert again["manifest_hash"] == m["manifest_hash"] and verify_corpus(out) == again
    assert (out / "notes.txt").read_text() == "mine" and not (out / "shards" / "part-00099.parquet").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]


def test_a_pinned_rates_file_prices_the_build_and_is_in_the_manifest(built, tmp_path, code_root):
    """A mixture may name a measured rates file instead of writing rates: the build uses
    its rates (a measured rate above the hand-set bound of 10 is fine), and the manifest
    records the file's hash, so the lineage of anything trained on it names the rates."""
    from ogi_ray.corpus.rates_file import write_rates_file

    _, _, configured = built
    rates = {"text": 1.0, "image": 12.5}
    doc = write_rates_file(tmp_path / "rates.json", {
        "name": "measured-here", "unit": "text", "modalities": list(rates), "rates": rates,
        "intervals": {"text": [1.0, 1.0], "image": [9.0, 20.0]}, "confidence": 0.95,
        "metric": {"name": "mean_normalised_heldout_loss"}, "trials": []})  # fmt: skip
    mix = mixture(tmp_path, code_root)
    data = yaml.safe_load(mix.read_text())
    data.pop("exchange_rates")
    data["exchange_rates_file"] = {"path": "rates.json", "sha256": doc["sha256"]}
    mix.write_text(yaml.safe_dump(data))
    m = build_corpus(mix, tmp_path / "out")
    assert m["exchange_rates"] == rates
    assert m["exchange_rates_source"] == {"kind": "measured", "file": "rates.json", "sha256": doc["sha256"],
                                          "name": "measured-here"}  # fmt: skip
    assert configured["exchange_rates_source"] == {"kind": "configured"}
    photos = next(s for s in m["sources"] if s["name"] == "photos")
    assert photos["effective_by_modality"]["image"] == pytest.approx(photos["tokens_by_modality"]["image"] * 12.5)
    # The same rates written by hand: above the configured bound, named at the field.
    data.pop("exchange_rates_file")
    data["exchange_rates"] = rates
    mix.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        build_corpus(mix, tmp_path / "out2")
    assert e.value.field == "exchange_rates" and "(0, 10]" in str(e.value)
