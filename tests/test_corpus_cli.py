"""`ogi corpus build` / `inspect` without a Ray cluster: every mistake that needs no data
fails before Ray starts; a non-empty folder that is not a corpus is never written to
without --overwrite (and never wiped); --help describes every argument; inspect prints
whole values and says what it verified."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ogi_ray.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_ray_started():
    import ray

    assert not ray.is_initialized()
    yield
    assert not ray.is_initialized(), "a validation error started Ray"


def _mixture(tmp_path: Path, change: dict | None = None) -> Path:
    m = yaml.safe_load((ROOT / "datasets" / "demo.yaml").read_text())
    for i, s in enumerate(m["sources"]):
        s.update((change or {}).get(i, {}))
    p = tmp_path / "mix.yaml"
    p.write_text(yaml.safe_dump(m))
    return p


@pytest.mark.parametrize(
    "change,field",
    [
        ({0: {"params": {"max_file": 6}}}, "sources[0].params.max_file"),
        ({0: {"params": {"max_files": 0}}}, "sources[0].params.max_files"),
        ({0: {"license": "PSF-2.0 ANDD MIT"}}, "sources[0].license"),
        ({2: {"params": {"fps": "fast"}}}, "sources[2].params.fps"),
    ],
)  # fmt: skip
def test_errors_are_reported_before_ray_starts(tmp_path, capsys, change, field):
    out = tmp_path / "out"
    assert main(["corpus", "build", str(_mixture(tmp_path, change)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'mix.yaml'}: {field}:" in err and not out.exists()


def test_yaml_typo_fails_at_once(tmp_path, capsys):
    p = tmp_path / "m.yaml"
    p.write_text("name: x\nsources: [\n")
    assert main(["corpus", "build", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "malformed YAML" in capsys.readouterr().err


def test_a_non_empty_folder_that_is_not_a_corpus_is_refused_and_kept(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    mix = _mixture(home)  # the folder holding the mixture file itself
    (home / "notes.txt").write_text("keep me")
    assert main(["corpus", "build", str(mix), "--out", str(home)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "not a corpus" in err and "--overwrite" in err
    assert sorted(p.name for p in home.iterdir()) == ["mix.yaml", "notes.txt"]
    # A folder this command wrote (its marker or manifest) is accepted without --overwrite.
    from ogi_ray.corpus.output import MARKER, check_out

    (home / MARKER).write_bytes(b"x")
    assert check_out(str(home), overwrite=False).uri == str(home)
    (home / MARKER).unlink()
    assert check_out(str(home), overwrite=True).previous == []  # written into; nothing deleted


def test_build_help_describes_every_argument():
    corpus = next(a for a in build_parser()._subparsers._group_actions[0].choices["corpus"]._actions
                  if a.dest == "sub")  # fmt: skip
    for name in ("build", "inspect"):
        sub = corpus.choices[name]
        actions = [a for a in sub._actions if a.dest != "help"]
        assert actions and all(a.help for a in actions), [a.dest for a in actions if not a.help]


def test_inspect_prints_whole_values_and_what_it_verified(tmp_path, capsys):
    from ogi_ray.canonical import hash_canonical

    corpus = tmp_path / "c"
    (corpus / "shards").mkdir(parents=True)
    (corpus / "shards" / "part-00000.parquet").write_bytes(b"PAR1")
    (corpus / "tokenizer.json").write_text("{}")
    import hashlib

    h = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    lic = "CC-BY-SA-3.0 AND OFL-1.1 AND Apache-2.0 AND Unicode-DFS-2016 AND MIT"  # longer than any old column
    body = {"name": "c", "seed": 0, "exchange_rates": {"text": 1.0}, "total_rows": 1, "excluded": [],
            "sources": [{"name": "a_rather_long_source_name", "license": lic, "target_share": 1.0,
                         "realized_share": 1.0, "effective_tokens": 5.0, "repeat_factor": 1.0,
                         "tokens_by_modality": {"text": 5}, "excluded_rows": {"missing license": 2}}],
            "shards": [{"path": "shards/part-00000.parquet", "sha256": h(corpus / "shards" / "part-00000.parquet"), "rows": 1}],
            "tokenizers": {"text": {"file": "tokenizer.json", "sha256": h(corpus / "tokenizer.json")}}}  # fmt: skip
    body["manifest_hash"] = hash_canonical(body)
    (corpus / "manifest.json").write_text(json.dumps(body))
    assert main(["corpus", "inspect", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert lic in out and "a_rather_long_source_name" in out and "2 rows excluded by license: missing license" in out
    assert "verified: manifest hash and all 2 files' SHA-256" in out
    assert main(["corpus", "inspect", str(corpus), "--no-verify"]) == 0
    assert "manifest hash only" in capsys.readouterr().out
    shutil.rmtree(corpus / "shards")
    assert main(["corpus", "inspect", str(corpus)]) == 2
