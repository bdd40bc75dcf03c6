"""The planner against published practice and independently computed formulas.

Expected values come from papers and datasheets (Narayanan et al. 2021, Korthikanti et al.
2022, Megatron-LM's docs, NVIDIA datasheets) or from arithmetic written out here, never
from the code under test.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from ogi_ray.parallel import cli as pcli
from ogi_ray.parallel.cost import bubble_fraction, evaluate
from ogi_ray.parallel.plan import ParallelPlan
from ogi_ray.parallel.planner import (
    PlanError,
    backbone_params,
    enumerate_layouts,
    model_params,
    model_spec,
    plan,
    plan_for_world,
)
from ogi_ray.parallel.shapes import Layouts, ModelSpec
from ogi_ray.parallel.topology import Calibration, load_topology

GIB = 2**30
# GPT-3 175B (Brown et al. 2020, Table 2.1): 96 layers, d 12288, 96 heads, context 2048,
# batch 3.2M tokens = 1536 sequences.
GPT3 = ModelSpec(name="gpt3", params=175e9, layers=96, hidden=12288, heads=96, seq_len=2048,
                 global_batch=1536, vocab=51200)
# GPT-2 small shape (Radford et al. 2019): 124M parameters.
GPT2_SMALL = ModelSpec(name="gpt2", params=124e6, layers=12, hidden=768, heads=12, seq_len=1024,
                       global_batch=64, vocab=50257)


@pytest.fixture(scope="module")
def selene():
    return load_topology("a100-selene-128x8")  # 1,024 A100s, 8 per node


@pytest.fixture(scope="module")
def h100():
    return load_topology("h100-nvlink-ib-64x8")


# --- published practice ----------------------------------------------------------------------


def test_gpt3_on_1024_a100_keeps_tp_in_node_and_pipelines_across(selene):
    res = plan(GPT3, selene)
    best = res.best.plan
    # Narayanan et al. 2021 (PTD-P): t = 8 (the GPUs of one DGX A100), p = 8 or 16 across
    # nodes, data parallel over the rest. Our runtime replicates the LM head over tp and
    # gathers fp32 norm outputs under SP, which makes t = 4 as good (docs/parallel.md).
    assert best.tp in (4, 8) and selene.gpus_per_node % best.tp == 0
    assert best.pp in (8, 16)
    assert best.world_size == 1024
    assert res.best.memory_gib <= 80
    # Published: 44–52 % of peak for PTD-P A100 runs, 47 % MFU on H100 (Megatron-LM).
    assert 0.3 < res.best.mfu < 0.7


def test_gpt3_tp_stays_in_node_across_cost_assumptions(selene):
    # The choice must not hinge on one guessed efficiency: matmul 60–85 % of peak, links
    # 60–90 % of line rate (written into the calibration as measured bus bandwidths).
    for eff in (0.6, 0.75, 0.85):
        for link in (0.6, 0.9):
            cal = Calibration(intra_bus_gbps=2400 * link, inter_bus_gbps=200 * link)
            best = plan(GPT3, replace(selene, matmul_efficiency=eff, calibration=cal)).best.plan
            assert best.tp in (4, 8) and best.pp > 1, (eff, link, best)


def test_gpt3_on_h100_matches_megatron_recipes(h100):
    best = plan(GPT3, h100).best.plan
    # Megatron-LM docs: GPT-3 175B on H100 with TP=4, PP=8; NVIDIA's NeMo guidance for
    # 70–175B: TP 8, PP 4–8. Either way TP inside the node and PP across nodes.
    assert best.tp in (4, 8) and best.pp in (4, 8, 16)
    assert best.world_size == 512


def test_small_model_on_one_node_is_pure_data_parallel():
    one_node = load_topology("a100-8x8").for_world(8)
    best = plan(GPT2_SMALL, one_node).best.plan
    assert (best.dp, best.tp, best.pp) == (8, 1, 1)
    assert best.activation_checkpoint == "none"  # 80 GB is plenty: recompute only costs time


def test_ogi_preset_on_cpu_2_is_data_parallel():
    best = plan("small", load_topology("cpu-2")).best.plan
    assert (best.dp, best.tp, best.pp) == (2, 1, 1)


# --- memory --------------------------------------------------------------------------------


def test_memory_infeasible_plans_are_never_chosen(selene):
    roomy = plan(GPT3, selene).best
    # Give each device 40 GiB: the winner no longer fits and must not be picked.
    tight_topo = replace(selene, hbm_gib=40)
    assert roomy.memory_gib > 40 * 0.9
    tight = plan(GPT3, tight_topo, top_k=50)
    # A layout's memory does not depend on the HBM size, so this also says "not the winner".
    assert all(p.memory_gib <= 40 * 0.9 for p in tight.alternatives)
    assert tight.best.step_time_s >= roomy.step_time_s


def test_no_layout_fits_is_an_error():
    # 175B parameters need ≥ 16 B each of state: 2.8 TB, far beyond 8 × 80 GiB.
    with pytest.raises(PlanError, match="no layout fits in memory"):
        plan(GPT3, load_topology("a100-8x8").for_world(8))


def test_fsdp_state_is_twelve_bytes_per_parameter_over_dp(selene):
    # FSDP2 over fp32 parameters with AdamW: 4 (param) + 8 (m, v) B/param sharded over dp
    # (ZeRO-3, Rajbhandari et al. 2020), of the busiest stage's parameters. dp 16, tp 8,
    # pp 8: 12 blocks of 12h²/8 + 2h, plus the token embedding V·h = 629,145,600 on the
    # first stage, or the rest of the root (175e9 − 96 blocks − V·h) on the last.
    blocks = 12 * (12 * 12288**2 // 8 + 2 * 12288)
    root = 175e9 - 96 * (12 * 12288**2 + 2 * 12288)
    first, last = blocks + 51200 * 12288, blocks + root - 51200 * 12288
    res = plan(GPT3, selene, fixed={"dp": 16, "tp": 8, "pp": 8, "microbatches": 96,
                                    "activation_checkpoint": "none", "sequence_parallel": True})
    state = (res.best.memory["params"] + res.best.memory["optimizer"]) * GIB
    assert state == pytest.approx(12 * first / 16) or state == pytest.approx(12 * last / 16)


# --- cost formulas ---------------------------------------------------------------------------


def test_bubble_formula():
    assert bubble_fraction(1, 8) == 0
    assert bubble_fraction(4, 4) == pytest.approx(3 / 7)  # GPipe: (p-1)/(m+p-1)
    assert bubble_fraction(8, 96) == pytest.approx(7 / 103)


def test_bubble_in_the_step_time(selene):
    for p in plan(GPT3, selene, top_k=20).alternatives:
        t, q = p.time, p.plan
        pipeline = p.step_time_s - t["dp_exposed_s"] - t["optimizer_s"] - t["norms_s"] - t["overhead_s"]
        expected = (q.pp - 1) / (q.microbatches + q.pp - 1)
        assert t["pp_bubble_s"] / pipeline == pytest.approx(expected)
        assert t["bubble_fraction"] == pytest.approx(expected)


def _one(spec, topo, dp, tp, pp, m, **kw):
    d = dict(dp=dp, tp=tp, pp=pp, m=m, rows=spec.global_batch / (dp * m), ac=0, sp=False,
             raf=pp == 1) | kw
    res = evaluate(spec, topo, Layouts(**{k: [v] for k, v in d.items()}))
    return {k: float(v[0]) for k, v in res.items()}


def test_compute_time_is_narayanan_flops_over_peak(selene):
    # Narayanan et al. 2021, eq. 3 without recomputation: 72·B·s·l·h²·(1 + s/6h) + 6·B·s·h·V.
    topo = replace(selene, hbm_gb_per_s=0.0, matmul_efficiency=0.5)  # pure FLOP roofline
    B, s, L, h, V = GPT3.global_batch, GPT3.seq_len, GPT3.layers, GPT3.hidden, GPT3.vocab
    flops = 72 * B * s * L * h**2 * (1 + s / (6 * h)) + 6 * B * s * h * V
    dp, tp, pp, m = 8, 8, 16, 192
    r = _one(GPT3, topo, dp, tp, pp, m)
    # Per device: its stage's layers, plus on the last stage the LM head, which this
    # runtime replicates over tp (Megatron splits it; the head term is then /tp too).
    head = 6 * B * s * h * V / dp
    body = (flops - 6 * B * s * h * V) / (dp * tp * pp)
    assert r["compute_s"] == pytest.approx((body + head) / (0.5 * 312e12), rel=1e-9)


def test_tp_all_reduce_cost(selene):
    # 4 ring all-reduces of b·s·h bf16 values per layer: 2(t−1)/t · bytes / bandwidth
    # + 2(t−1) latency steps, over NVLink at 80 % of 300 GB/s.
    dp, tp, pp, m = 128, 8, 1, 12
    r = _one(GPT3, selene, dp, tp, pp, m)
    b = GPT3.global_batch / (dp * m)
    msg = 2 * b * GPT3.seq_len * GPT3.hidden
    one = 2 * 7 * 5e-6 + 2 * 7 / 8 * msg / (0.8 * 300e9)
    assert r["tp_comm_s"] == pytest.approx(m * GPT3.layers * 4 * one)


def test_mfu_definition(selene):
    r = _one(GPT3, selene, 16, 8, 8, 96)
    per_token = 6 * (GPT3.params - GPT3.vocab * GPT3.hidden) + 12 * 96 * 12288 * 2048  # PaLM
    flops = per_token * GPT3.global_batch * GPT3.seq_len
    assert r["mfu"] == pytest.approx(flops / (r["step_time_s"] * 1024 * 312e12))


def test_more_microbatches_shrink_the_bubble(selene):
    few, many = _one(GPT3, selene, 16, 8, 8, 12), _one(GPT3, selene, 16, 8, 8, 96)
    assert many["bubble_fraction"] < few["bubble_fraction"]
    assert many["pp_bubble_s"] < few["pp_bubble_s"]


# --- constraints, search -------------------------------------------------------------------


def test_every_layout_respects_the_constraints():
    topo = load_topology("h100-nvlink-ib-64x8").for_world(48)  # 6 nodes of 8
    spec = ModelSpec(params=13e9, layers=40, hidden=5120, heads=40, seq_len=2048, global_batch=96)
    c = enumerate_layouts(spec, topo)
    assert c.size > 0
    for dp, tp, pp, m, rows, sp, raf in zip(c.dp, c.tp, c.pp, c.m, c.rows, c.sp, c.raf, strict=True):
        assert dp * tp * pp == 48
        assert 8 % tp == 0 and 40 % tp == 0 and 40 % pp == 0
        assert 96 % dp == 0 and (96 // dp) % m == 0 and dp * m * rows == 96
        assert pp == 1 or (m >= pp and not raf)  # 1F1B: m ≥ pp; stages stay gathered
        assert tp > 1 or not sp
    assert set(c.tp) == {1, 2, 4, 8}  # tp = 16 or more would leave the node


def test_idle_devices_are_rejected_unless_allowed():
    ten_k = load_topology("h100-10k-1250x8")
    # 10,000 = 2^4·5^4 devices, but dp must divide 1536 = 2^9·3: no exact layout.
    with pytest.raises(PlanError, match="max-idle"):
        plan(GPT3, ten_k)
    best = plan(GPT3, ten_k, max_idle=0.1).best
    assert 0 < best.idle_devices <= 1000
    assert best.plan.world_size == 10_000 - best.idle_devices


def test_ten_thousand_gpus_plan_fast():
    ten_k = load_topology("h100-10k-1250x8")
    # GPT-3's width at 100 layers and a batch of 4000, so that 10,000 = 2^4·5^4 devices
    # factor exactly. (A 1T model does not fit this runtime's fp32 state on 80 GB H100s.)
    spec = ModelSpec(params=181e9, layers=100, hidden=12288, heads=96, seq_len=2048,
                     global_batch=4000, vocab=51200)
    t = time.perf_counter()
    result = plan(spec, ten_k)
    elapsed = time.perf_counter() - t
    assert elapsed < 5.0  # benchmarks/plan_speed_parallel.py measures it (< 1 s target)
    assert result.best.plan.world_size == 10_000
    assert result.best.plan.tp in (4, 8)


# --- model descriptions, driver entry, CLI -------------------------------------------------


def test_backbone_params_match_the_real_model():
    torch = pytest.importorskip("torch")
    from ogi_ray.model import build
    from ogi_ray.model.config import preset

    cfg = preset("small")
    torch.manual_seed(0)
    model = build(cfg)
    counted = sum(p.numel() for n, p in model.named_parameters()
                  if n.startswith(("layers.", "tok_embed.", "lm_head.", "norm.")))
    assert backbone_params(cfg) == counted
    # Every parameter, with all modalities present (their embedders, heads, segment
    # embeddings): the memory model counts them all.
    full = preset("tiny", vocab_size=300, n_text=12, n_img=16, img_dim=48, n_vid=8, vid_group=4,
                  vid_dim=96, n_aud=4, aud_dim=40, n_steps=5, prop_dim=4, act_dim=4)
    for c in (cfg, full):
        assert model_params(c) == sum(p.numel() for p in build(c).parameters())
    spec = model_spec(full)
    assert (spec.lm_tokens, spec.seq_len, spec.dense_mask) == (12, full.layout.seq_len, True)


def test_plan_for_world_with_a_model_config_like_object():
    cfg = SimpleNamespace(preset="custom", dim=512, n_layers=8, n_heads=8, vocab_size=4096,
                          hidden_dim=1408, max_seq_len=256)
    best = plan_for_world(cfg, 2, load_topology("cpu-2"))
    assert isinstance(best, ParallelPlan) and best.world_size == 2
    assert best.micro_batch_rows * best.microbatches * best.dp == 16  # 8 rows per device
    # More workers than the CPU node has devices: they share the node (fractional CPUs).
    assert plan_for_world(cfg, 8, load_topology("cpu-2")).world_size == 8
    with pytest.raises(PlanError, match="world_size"):
        plan_for_world(cfg, 12, load_topology("a100-8x8"))


def test_model_spec_sources():
    assert model_spec("gpt3-175b").layers == 96
    assert model_spec({"params": 1e9, "layers": 4, "hidden": 256, "heads": 4,
                       "seq_len": 128}, world_size=4).global_batch == 32
    with pytest.raises(PlanError):
        model_spec(3.5)


def _run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    p = argparse.ArgumentParser()
    pcli.register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["parallel", *argv])
    rc = args.func(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_plan_json(capsys):
    rc, out, _ = _run_cli(["plan", "--topology", "a100-selene-128x8", "--params", "175e9",
                           "--layers", "96", "--hidden", "12288", "--heads", "96", "--seq", "2048",
                           "--global-batch", "1536", "--vocab", "51200", "--json", "--top", "3"],
                          capsys)
    assert rc == 0
    doc = json.loads(out)
    for key in ("dp", "tp", "pp", "microbatches", "step_time_s", "mfu"):
        assert key in doc
    assert doc["tp"] in (4, 8) and len(doc["alternatives"]) == 3
    assert doc["activation_checkpoint"] in ("none", "selective", "full") and "memory" in doc
    assert math.isclose(doc["dp"] * doc["tp"] * doc["pp"], 1024)


def test_cli_plan_table_and_errors(capsys):
    rc, out, _ = _run_cli(["plan", "--topology", "h100-nvlink-ib-64x8", "--model", "gpt3-175b"],
                          capsys)
    assert rc == 0 and "MFU" in out and "bubble" in out
    rc, _, err = _run_cli(["plan", "--topology", "cpu-2", "--params", "1e9", "--layers", "4"],
                          capsys)
    assert rc == 2 and "--hidden" in err


def test_planning_imports_neither_torch_nor_ray():
    code = ("import sys, ogi_ray.parallel.planner, ogi_ray.parallel.cost, ogi_ray.parallel.memory, "
            "ogi_ray.parallel.plan, ogi_ray.parallel.shapes, ogi_ray.parallel.calibrate, "
            "ogi_ray.parallel.topology, ogi_ray.parallel.cli; "
            "bad = [m for m in ('torch', 'ray') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
