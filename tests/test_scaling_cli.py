"""`ogi plan` end to end, in-process through `register`, plus the modality token budgets."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ogi_ray.scaling import cli
from ogi_ray.scaling.errors import ScalingInputError
from ogi_ray.scaling.tokens import load_mixture, token_budget

HOFFMANN = (1.69, 406.4, 410.7, 0.34, 0.28)
EPOCH = {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}


def ogi(capsys, *argv):
    parser = argparse.ArgumentParser(prog="ogi")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_plan_json_matches_brute_force(capsys):
    rc, out, _ = ogi(capsys, "plan", "--compute", "5.76e23", "--constants", "hoffmann", "--json")
    assert rc == 0
    plan = json.loads(out)
    for key in (
        "n_params",
        "tokens",
        "exponent_n",
        "exponent_d",
        "loss",
        "inference_aware",
        "batch_tokens",
        "tokens_by_modality",
    ):
        assert key in plan
    for key in ("n_params", "tokens", "loss"):
        assert key in plan["inference_aware"]
    # Brute force: minimise L(N, C/6N) over a dense log grid of N.
    e, a, b, alpha, beta = HOFFMANN
    n = np.geomspace(1e8, 1e13, 1_000_001)
    d = 5.76e23 / (6 * n)
    i = int(np.argmin(e + a / n**alpha + b / d**beta))
    assert plan["n_params"] == pytest.approx(n[i], rel=0.01)
    assert plan["tokens"] == pytest.approx(d[i], rel=0.01)
    assert plan["exponent_n"] == pytest.approx(beta / (alpha + beta))
    assert plan["batch_tokens"] == round(0.292 * 5.76e23**0.3271)


def test_plan_table_and_inference(capsys):
    rc, out, _ = ogi(capsys, "plan", "--compute", "1e23", "--inference-tokens", "2e13")
    assert rc == 0
    assert "compute-optimal" in out and "inference-aware" in out and "C^0.51" in out
    rc, out, _ = ogi(capsys, "plan", "--compute", "1e23", "--inference-tokens", "2e13", "--json")
    plan = json.loads(out)
    assert plan["recommended"] == "inference_aware"
    ia = plan["inference_aware"]
    assert ia["n_params"] < plan["n_params"] and ia["tokens"] > plan["tokens"]
    assert ia["params_reduction"] == pytest.approx(1 - ia["n_params"] / plan["n_params"])
    assert ia["loss"] == pytest.approx(plan["loss"], rel=1e-9)
    assert len(ia["seed_rule_costs"]) == 3


def test_write_yaml_plan(capsys, tmp_path):
    target = tmp_path / "plans" / "plan.yaml"
    rc, _, _ = ogi(
        capsys,
        "plan",
        "--compute",
        "1e22",
        "--constants",
        "epoch",
        "--write",
        str(target),
        "--critical-batch",
        "1e6",
    )
    assert rc == 0
    doc = yaml.safe_load(target.read_text())
    p = doc["plan"]
    assert set(doc) == {"plan"}
    assert p["constants"] == "epoch" and p["compute"] == 1e22
    assert p["batch_tokens"] == 1_000_000  # capped by the measured critical batch
    assert p["tokens_by_modality"] == {}
    assert 6 * p["n_params"] * p["tokens"] == pytest.approx(1e22, rel=1e-6)
    assert [f.name for f in target.parent.iterdir()] == ["plan.yaml"]  # temp file renamed away


def test_constants_file_errors_name_file_and_key(capsys, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("E: 1.7\nA: 400\nB: 400\nalpha: 0.3\n")
    rc, _, err = ogi(capsys, "plan", "--compute", "1e22", "--constants", str(f))
    assert rc == 2 and str(f) in err and "beta" in err
    rc, _, err = ogi(capsys, "plan")
    assert rc == 2 and "--compute" in err
    with pytest.raises(SystemExit):
        ogi(capsys, "plan", "--compute", "-5")


def test_fit_command(capsys, tmp_path):
    rng = np.random.default_rng(11)
    rows = ["N,D,loss,run"]
    for c in np.geomspace(6e18, 3e21, 8):
        for n in np.geomspace(3e7, 2e10, 8):
            d = c / (6 * n)
            loss = EPOCH["E"] + EPOCH["A"] / n ** EPOCH["alpha"] + EPOCH["B"] / d ** EPOCH["beta"]
            rows.append(f"{n:.6g},{d:.6g},{loss * np.exp(rng.normal(0, 0.003)):.6f},r")
    runs = tmp_path / "runs.csv"
    runs.write_text("\n".join(rows) + "\n")
    png, consts = tmp_path / "fit.png", tmp_path / "fitted.yaml"
    rc, out, _ = ogi(
        capsys,
        "plan",
        "fit",
        str(runs),
        "--json",
        "--bootstrap",
        "4",
        "--plot",
        str(png),
        "--write-constants",
        str(consts),
    )
    assert rc == 0
    fit = json.loads(out)
    for key in ("E", "alpha", "beta"):
        assert fit[key] == pytest.approx(EPOCH[key], rel=0.05), key
    assert set(fit["bootstrap"]["intervals"]) >= {"E", "A", "B", "alpha", "beta"}
    assert png.read_bytes()[:4] == b"\x89PNG"
    # The written constants feed straight back into the planner.
    rc, out, _ = ogi(capsys, "plan", "--compute", "1e22", "--constants", str(consts), "--json")
    assert rc == 0 and json.loads(out)["constants"]["alpha"] == pytest.approx(fit["alpha"])


def test_fit_command_bad_csv(capsys, tmp_path):
    runs = tmp_path / "runs.csv"
    runs.write_text("N,D\n1,2\n")
    rc, _, err = ogi(capsys, "plan", "fit", str(runs))
    assert rc == 2 and str(runs) in err and "loss" in err


def test_no_torch_or_ray_imported():
    code = (
        "import sys, ogi_ray.scaling, ogi_ray.scaling.cli, ogi_ray.scaling.report; "
        "bad = [m for m in ('torch', 'ray') if m in sys.modules]; print(bad); "
        "sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    for src in (root / "ogi_ray" / "scaling").glob("*.py"):
        text = src.read_text()
        assert "import torch" not in text and "import ray" not in text, src


# --- modality token budgets ----------------------------------------------------------------

RATES = {"text": 1.0, "image": 0.5, "video": 0.4, "audio": 0.6, "proprio": 0.8, "action": 1.0}


def manifest(tmp_path, **overrides):
    data = {
        "exchange_rates": RATES,
        "sources": [
            {
                "name": "web",
                "target_share": 0.6,
                "effective_tokens": 1.0e6 + 0.5 * 4.0e5,
                "tokens_by_modality": {"text": 1_000_000, "image": 400_000},
            },
            {
                "name": "embodied",
                "target_share": 0.4,
                "effective_tokens": 0.4 * 2.0e6 + 0.8 * 5.0e5 + 1.0 * 1.0e5,
                "tokens_by_modality": {"video": 2_000_000, "proprio": 500_000, "action": 100_000},
            },
        ],
    }
    data.update(overrides)
    f = tmp_path / "manifest.json"
    f.write_text(json.dumps(data))
    return f


def test_manifest_budget_uses_realised_proportions(tmp_path):
    d = 1e12
    budget = token_budget(load_mixture(manifest(tmp_path)), d)
    web = budget["by_source"]["web"]["raw_by_modality"]
    emb = budget["by_source"]["embodied"]["raw_by_modality"]
    # Realised raw proportions are kept within each source...
    assert web["image"] / web["text"] == pytest.approx(0.4)
    assert emb["proprio"] / emb["video"] == pytest.approx(0.25)
    # ...and each source delivers its share of the effective tokens.
    assert sum(v * RATES[m] for m, v in web.items()) == pytest.approx(0.6 * d)
    assert sum(v * RATES[m] for m, v in emb.items()) == pytest.approx(0.4 * d)
    total = budget["raw_tokens_by_modality"]
    assert sum(v * RATES[m] for m, v in total.items()) == pytest.approx(d)
    assert budget["notes"] == []


def test_mixture_yaml_splits_equally_and_says_so(tmp_path, capsys):
    f = tmp_path / "mixture.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "exchange_rates": RATES,
                "sources": [
                    {
                        "name": "web",
                        "share": 32,
                        "modalities": ["text", "image"],
                        "license": "CC-BY-4.0",
                    },
                    {"name": "code", "share": 14, "modalities": ["text"]},
                    {"name": "video", "share": 18, "modalities": ["video", "audio", "text"]},
                    {"name": "embodied", "share": 36, "modalities": ["video", "proprio", "action"]},
                ],
            }
        )
    )
    budget = token_budget(load_mixture(f), 3e12)
    assert "equal" in budget["method"]
    assert any("normalised" in n for n in budget["notes"])  # shares given in percent
    vid = budget["by_source"]["video"]
    eff = {m: v * RATES[m] for m, v in vid["raw_by_modality"].items()}
    assert eff["video"] == pytest.approx(eff["audio"]) == pytest.approx(0.18 * 3e12 / 3)
    rc, out, _ = ogi(capsys, "plan", "--compute", "1e23", "--mixture", str(f), "--json")
    plan = json.loads(out)
    assert set(plan["tokens_by_modality"]) == {
        "text",
        "image",
        "video",
        "audio",
        "proprio",
        "action",
    }
    assert sum(v * RATES[m] for m, v in plan["tokens_by_modality"].items()) == pytest.approx(
        plan["tokens"]
    )
    rc, out, _ = ogi(capsys, "plan", "--compute", "1e23", "--mixture", str(f))
    assert "equal split" in out


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"exchange_rates": {"text": 1.0, "smell": 0.1}}, "exchange_rates.smell"),
        ({"exchange_rates": {"text": 1.0}}, "sources[0].tokens_by_modality.image"),
        (
            {
                "sources": [
                    {"name": "web", "effective_tokens": 1.0, "tokens_by_modality": {"text": 1}}
                ]
            },
            "sources[0].target_share",
        ),
        (
            {
                "sources": [
                    {
                        "name": "w",
                        "target_share": 1,
                        "effective_tokens": 1,
                        "tokens_by_modality": {"text": -4},
                    }
                ]
            },
            "sources[0].tokens_by_modality.text",
        ),
    ],
)
def test_bad_manifest_names_file_and_field(tmp_path, overrides, field):
    f = manifest(tmp_path, **overrides)
    with pytest.raises(ScalingInputError) as err:
        load_mixture(f)
    assert err.value.field == field and str(f) in str(err.value)


def test_manifest_effective_mismatch_is_noted(tmp_path):
    f = manifest(tmp_path)
    data = json.loads(f.read_text())
    data["sources"][0]["effective_tokens"] = 5.0  # disagrees with sum(raw x rate) = 1.2e6
    f.write_text(json.dumps(data))
    budget = token_budget(load_mixture(f), 1e9)
    assert any(n.startswith("web:") and "used the latter" in n for n in budget["notes"])
    web = budget["by_source"]["web"]["raw_by_modality"]
    assert sum(v * RATES[m] for m, v in web.items()) == pytest.approx(0.6e9)


def test_bad_mixture_yaml_and_suffix(tmp_path):
    f = tmp_path / "m.yml"
    f.write_text(
        "exchange_rates: {text: 1.0}\nsources:\n  - {name: a, share: 1, modalities: [text, image]}\n"
    )
    with pytest.raises(ScalingInputError) as err:
        load_mixture(f)
    assert err.value.field == "sources[0].modalities" and "image" in str(err.value)
    g = tmp_path / "m.txt"
    g.write_text("{}")
    with pytest.raises(ScalingInputError, match="json"):
        load_mixture(g)
