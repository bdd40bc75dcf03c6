"""Corpus build on a real local Ray cluster, from real stdlib code and skimage photos,
and every kind of bad input: each error names the file and the field."""

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
from ogi_ray.corpus.tokenize import SourceDataError, tokenize_sample

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CODE_FILES = ["bisect.py", "colorsys.py", "keyword.py", "reprlib.py", "this.py", "shlex.py"]


def mixture(tmp_path: Path, code_root: Path, **over) -> Path:
    m = {
        "name": "t", "seed": 3, "exchange_rates": {"text": 1.0, "image": 0.5},
        "text_tokenizer": {"vocab_size": 400, "train_chars": 200000, "max_tokens": 64},
        "patches": {"size": 32, "patch": 8}, "shard_rows": 40, "heldout_fraction": 0.1,
        "sources": [
            {"name": "code", "kind": "python_stdlib", "share": 0.6, "modalities": ["text"],
             "license": "PSF-2.0", "params": {"root": str(code_root)}},
            {"name": "photos", "kind": "skimage_captions", "share": 0.4,
             "modalities": ["text", "image"], "license": "CC0-1.0",
             "params": {"names": ["cat", "coffee", "rocket", "moon"], "views": 3}},
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


def test_manifest_shares_and_schema(built):
    tmp, _, m = built
    assert m == verify_corpus(tmp / "out")
    assert m["manifest_hash"] == seal(m)["manifest_hash"]
    # Realised shares recomputed from the shards themselves, not from the manifest.
    eff = {}
    for s in m["shards"]:
        t = pq.read_table(tmp / "out" / s["path"]).to_pydict()
        for src, e in zip(t["source"], t["effective_tokens"], strict=True):
            eff[src] = eff.get(src, 0.0) + e
        for key in ("source", "modality", "tokens_text", "tokens_image", "effective_tokens"):
            assert key in t
        for i, mod in enumerate(t["modality"]):
            rate = {"text": 1.0, "image": 0.5}
            assert t["effective_tokens"][i] == pytest.approx(
                sum(t[f"tokens_{x}"][i] * rate[x] for x in mod.split("+")))
    total = sum(eff.values())
    targets = {s["name"]: s["target_share"] for s in m["sources"]}
    # Schema exactly as documented (docs/corpus.md), rows in mixed order, no held-out row.
    table = pq.read_table(tmp / "out" / m["shards"][0]["path"])
    assert table.schema.remove_metadata() == pa.schema(sorted(SHARD_SCHEMA, key=lambda f: f.name))
    positions, train_keys = [], set()
    for s in m["shards"]:
        t = pq.read_table(tmp / "out" / s["path"], columns=["position", "source", "row_key"])
        positions += t["position"].to_pylist()
        train_keys |= set(zip(t["source"].to_pylist(), t["row_key"].to_pylist(), strict=True))
    assert positions == list(range(m["total_rows"]))
    for s in m["heldout_shards"]:
        t = pq.read_table(tmp / "out" / s["path"], columns=["source", "row_key"])
        held = set(zip(t["source"].to_pylist(), t["row_key"].to_pylist(), strict=True))
        assert held and not held & train_keys
        # Whole documents are held out: no document has rows on both sides.
        docs = lambda keys: {(s, k.rsplit("/", 1)[0]) for s, k in keys}  # noqa: E731
        assert not docs(held) & docs(train_keys)
    for name, e in eff.items():
        assert abs(e / total - targets[name]) < 0.005
    assert {s["name"] for s in m["sources"]} == {"code", "photos"}
    assert m["tokenizers"]["text"]["sha256"]
    assert m["heldout_shards"], "a held-out split was requested"


def test_same_inputs_same_hash_and_one_byte_changes_it(built, tmp_path, code_root, monkeypatch):
    import ray

    _, mix, m = built
    # A different block count (as on a bigger cluster) and the large-corpus ordering path
    # (Ray Data's range-partitioned sort instead of the driver's gather) change no byte.
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    monkeypatch.setattr("ogi_ray.corpus.build.DRIVER_ORDER_BYTES", -1)
    monkeypatch.setattr("ogi_ray.corpus.build.PART_BYTES", 1)  # one partition per shard
    again = build_corpus(mix, tmp_path / "again")
    assert again["manifest_hash"] == m["manifest_hash"]
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in m["shards"]]
    changed = tmp_path / "changed"
    shutil.copytree(code_root, changed)
    f = changed / "keyword.py"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] = ord("Z") if raw[len(raw) // 2] != ord("Z") else ord("Y")
    f.write_bytes(bytes(raw))
    other = build_corpus(mixture(tmp_path, changed), tmp_path / "other")
    assert other["manifest_hash"] != m["manifest_hash"]
    code = [s for s in other["sources"] if s["name"] == "code"][0]
    assert code["input_hash"] != [s for s in m["sources"] if s["name"] == "code"][0]["input_hash"]


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


def test_license_gate_excludes_nc_source(ray_local, tmp_path, code_root):
    mix = yaml.safe_load(mixture(tmp_path, code_root).read_text())
    mix["sources"].append({"name": "nc", "kind": "skimage_captions", "share": 0.1,
                           "modalities": ["text", "image"], "license": "CC-BY-NC-4.0",
                           "params": {"names": ["cat"], "views": 1}})
    p = tmp_path / "nc.yaml"
    p.write_text(yaml.safe_dump(mix))
    m = build_corpus(p, tmp_path / "out")
    assert [e["name"] for e in m["excluded"]] == ["nc"]
    assert "CC-BY-NC-4.0" in m["excluded"][0]["reason"]
    for s in m["shards"]:
        assert "nc" not in set(pq.read_table(tmp_path / "out" / s["path"], columns=["source"])["source"].to_pylist())


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda m: m["sources"][0].update(share=0.9), "sources"),
        (lambda m: m["sources"][0].update(kind="nope"), "sources[0].kind"),
        (lambda m: m["sources"][0].pop("license"), "sources"),
        (lambda m: m["sources"][0].update(licence="MIT"), "sources[0].licence"),
        (lambda m: m["exchange_rates"].pop("image"), "exchange_rates"),
        (lambda m: m["sources"][1].update(modalities=["smell"]), "sources[1].modalities"),
    ],
)  # fmt: skip
def test_bad_mixture_errors_name_file_and_field(tmp_path, code_root, change, field):
    m = yaml.safe_load(mixture(tmp_path, code_root).read_text())
    change(m)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(m))
    with pytest.raises(ConfigError) as e:
        build_corpus(p, tmp_path / "out")
    assert e.value.file == str(p) and e.value.field == field
    assert not (tmp_path / "out").exists()


def test_missing_license_is_named_in_the_share_error(tmp_path, code_root):
    m = yaml.safe_load(mixture(tmp_path, code_root).read_text())
    m["sources"][0].pop("license")
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(m))
    with pytest.raises(ConfigError, match=r"excluded by license: code \(missing license"):
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
        list(tokenize_sample(sample, source="robot", bpe=None, text_cfg=TextTokenizerConfig(),
                             patch_cfg=PatchConfig(), rates={"proprio": 1.0, "action": 1.0}))
    assert e.value.field == "proprio" and e.value.source == "robot"


def test_nan_in_source_data_stops_the_build(ray_local, tmp_path, code_root, module_cache):
    """A real Meta-World rollout whose cached file got one NaN: the build names the
    mixture file, the source, the item and the field, and writes nothing."""
    from ogi_ray.corpus.sources import metaworld_demos as mw
    from ogi_ray.corpus.sources._cache import load_npz, save_npz

    params = {"tasks": ["reach-v3"], "seeds": 1, "max_steps": 6, "size": 32}
    list(mw.read("reach-v3:seed0", params))  # renders into this module's cache
    path = mw.cache_path("reach-v3", 0, mw._settings(params))
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
    assert (e.value.file, e.value.source, e.value.item, e.value.field) == (
        str(p), "robot", "reach-v3:seed0", "proprio")
    assert str(p) in str(e.value) and "NaN" in str(e.value)
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
    assert (e.value.source, e.value.field) == ("photos", "modalities")
    assert "['text']" in e.value.message and e.value.file == str(p)
    assert not any(x.name.startswith("out") for x in tmp_path.iterdir())


def test_failed_write_leaves_nothing(ray_local, tmp_path, code_root, monkeypatch):
    import ogi_ray.corpus.build as b

    calls = {"n": 0}
    real = pq.write_table

    def failing(table, where, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        b.build_corpus(mixture(tmp_path, code_root), tmp_path / "out")
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())
    # A failed rebuild leaves the previous corpus as it was.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text("previous")
    calls["n"] = 0
    with pytest.raises(OSError, match="disk full"):
        b.build_corpus(mixture(tmp_path, code_root), tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == ["out"]
    assert (tmp_path / "out" / "manifest.json").read_text() == "previous"
