"""The ``ogi`` command on bad input, as a new user meets it (issue 17): each case answers
before Ray starts, names the file and the field, says what to do, and never touches a
user's files. No Ray cluster is started by these tests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from ogi_ray.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _ray_started() -> bool:
    import ray

    return ray.is_initialized()


def test_missing_corpus_names_the_field_and_the_build_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/corpus here
    assert main(["train", "--config", str(ROOT / "jobs/configs/small.yaml")]) == 2
    err = capsys.readouterr().err
    assert "jobs/configs/small.yaml: data.corpus: runs/corpus is not a built corpus" in err
    assert "`ogi corpus build datasets/mixture.yaml --out runs/corpus`" in err
    assert not _ray_started()


def test_bad_overrides_are_blamed_on_the_command_line_all_at_once(capsys):
    cfg = str(ROOT / "jobs/configs/demo.yaml")
    assert main(["train", "--config", cfg, "data.batch_size=-1", "loop.steps=x", "optim.lr=0.01"]) == 2
    err = capsys.readouterr().err
    assert "2 problems" in err
    assert "command line: data.batch_size: must be >= 1 (from `data.batch_size=-1`)" in err
    assert "command line: loop.steps: expected an integer, got 'x' (from `loop.steps=x`)" in err
    assert not _ray_started()


def test_num_cpus_before_or_after_the_subcommand():
    p = build_parser()
    assert p.parse_args(["--num-cpus", "3", "train", "--config", "c.yaml"]).num_cpus == 3
    assert p.parse_args(["train", "--num-cpus", "5", "--config", "c.yaml"]).num_cpus == 5
    assert p.parse_args(["demo", "--num-cpus", "2"]).num_cpus == 2
    assert p.parse_args(["train", "--config", "c.yaml"]).num_cpus is None


def _fake_run(folder: Path, metrics: str | None) -> Path:
    (folder / "lineage").mkdir(parents=True)
    if metrics is not None:
        (folder / "metrics.jsonl").write_text(metrics)
    return folder


def test_report_skips_a_cut_last_line_and_names_a_missing_log(tmp_path, capsys):
    rows = [{"step": s, "loss/lm": 5.0 - s, "lr": 1e-3, "tokens_per_s": 10.0, "share/web": 0.7 + 0.01 * s,
             "share_target/web": 0.72, "share/code": 0.3 - 0.01 * s, "share_target/code": 0.28} for s in range(4)]  # fmt: skip
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "loss/l'  # a killed run
    run = _fake_run(tmp_path / "killed", text)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr()
    assert "last line is cut short" in out.err and "4 steps" in out.out
    report = (run / "report.md").read_text()  # the shares fed at step 3 beside the manifest's
    assert "| web | 73.00 % | 72.00 % | +1.00 |" in report and "| code | 27.00 % | 28.00 % | -1.00 |" in report
    assert (run / "shares.png").stat().st_size > 1000
    empty = _fake_run(tmp_path / "empty", None)
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"{empty}/metrics: no metrics log" in err and "Errno" not in err


def test_report_and_demo_never_write_over_user_files(tmp_path, capsys):
    run = _fake_run(tmp_path / "run", json.dumps({"step": 0, "loss/lm": 1.0}) + "\n")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["report", str(run), "--out", str(mine)]) == 2
    assert "not a report" in capsys.readouterr().err
    assert main(["demo", "--out", str(mine)]) == 2
    assert "not a demo output" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    assert not _ray_started()
    fresh = tmp_path / "reports"
    assert main(["report", str(run), "--out", str(fresh)]) == 0
    assert main(["report", str(run), "--out", str(fresh)]) == 2  # a previous report: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["report", str(run), "--out", str(fresh), "--overwrite"]) == 0


def test_verify_finds_the_run_inside_the_out_folder_or_lists_them(tmp_path, capsys):
    from ogi_ray.lineage.verify import find_run_dir

    for name in ("small", "other"):
        (tmp_path / "one" / name / "lineage").mkdir(parents=True) if name == "small" else None
    (tmp_path / "one" / "small" / "lineage" / "HEAD").write_text("x\n")
    assert find_run_dir(tmp_path / "one") == tmp_path / "one" / "small"  # ogi train --out one
    (tmp_path / "one" / "b" / "lineage").mkdir(parents=True)
    (tmp_path / "one" / "b" / "lineage" / "HEAD").write_text("x\n")
    with pytest.raises(FileNotFoundError, match="2 runs found, name one"):
        find_run_dir(tmp_path / "one")
    # A bad HEAD is shown as text, and it is the one problem reported (the root cause).
    assert main(["lineage", "verify", str(tmp_path / "one" / "small")]) == 1
    err = capsys.readouterr().err
    assert 'got "x\\n"' in err and "b'" not in err
    assert err.count("\n  ") == 1


def test_prove_without_a_tensor_lists_the_names(tmp_path, capsys):
    from ogi_ray.lineage.registry import LineageRegistry
    from ogi_ray.model import build, preset
    from ogi_ray.storage import Store
    from ogi_ray.train import checkpoint as ckpt
    from ogi_ray.train.lineage_hook import LineageHook
    from ogi_ray.train.optim import OptimConfig, build_optimizer

    model = build(preset("tiny", vocab_size=64, n_text=8), seed=0)
    opt, sched = build_optimizer(model, OptimConfig(), 10)
    run = Store(tmp_path / "run")
    saved = ckpt.save(run.sub("step_000001"), model, opt, sched, train_state={"step": 1}, world_target=None)
    hook = LineageHook(LineageRegistry(run.where("lineage")), "r", "c" * 64)
    hook.append(hook.record(run.sub("step_000001"), saved, step=1, manifest_hash="a" * 64, cursor={"rows": 1},
                            scores={}, segment=[], rng="b" * 64))  # fmt: skip
    assert main(["lineage", "prove", run.uri, "1"]) == 2
    out = capsys.readouterr().out
    assert "tok_embed.weight" in out and "norm.weight" in out
    assert main(["lineage", "prove", run.uri, "1", "norm.weight"]) == 0


def _actions(p: argparse.ArgumentParser, path: str = "ogi"):
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(a, argparse._HelpAction):
            yield path, a


def test_every_argument_of_every_subcommand_has_help():
    missing = [f"{path}: {a.dest}" for path, a in _actions(build_parser()) if not (a.help and a.help.strip())]
    assert missing == []


def test_plan_warns_on_a_budget_too_small_for_a_real_model(capsys):
    assert main(["plan", "--compute", "1e10"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "6.38 k parameters" in err and "extrapolation" in err
    assert main(["plan", "--compute", "1e21"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_parallel_plan_says_params_in_human_units(capsys):
    assert main(["parallel", "plan", "--topology", "cpu-2", "--model", "base"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model base: 91.2 M params, 12 layers") and "0.09125B" not in out
