"""The attention, element-wise and LM-loss probes of calibrate.py: the fits against hand
arithmetic, and quick real probes of the ogi block and LM head at the `tiny` preset.

Every expected number of the fit is written out from explicit integers here, never a
value the code under test computed."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import yaml

from ogi_ray.config import from_dict, to_dict
from ogi_ray.parallel.calibrate import (
    fit_block_rates,
    fit_loss_rate,
    probe_attention,
    probe_block,
    probe_lm_head,
)
from ogi_ray.parallel.planner import model_spec
from ogi_ray.parallel.shapes import ModelSpec
from ogi_ray.parallel.topology import Calibration

# The ogi `tiny` block: h 64, 4 heads, SwiGLU width 192, 128 slots a row.
TINY = ModelSpec(name="tiny", params=631_168, layers=2, hidden=64, heads=4, seq_len=128,
                 global_batch=8, vocab=4096, ffn_hidden=192, gated_mlp=True, lm_tokens=128,
                 dense_mask=True)

# 2 rows = 256 tokens. Forward GEMM FLOPs of one block (2MKN): q, k, v, o 4 × 2·256·64·64 =
# 8,388,608; w1, w3 2 × 2·256·64·192 = 12,582,912; w2 2·256·192·64 = 6,291,456.
GEMM_FLOPS = 8_388_608 + 12_582_912 + 6_291_456  # 27,262,976
# At 1 TFLOP/s and 10 µs per call, forward + backward (3×): 3 · (27.262976 + 7 · 10) µs.
GEMM_S = 3 * (27.262976e-6 + 7 * 10e-6)
ATTN_FLOPS = 4 * 2 * 128 * 128 * 64  # 8,388,608 forward
OPS_S = (104 + 159) * 5e-6  # forward + backward eager ops at 5 µs each
ELEM_BYTES = 256 * 2 * (20 * 64 + 8 * 64 + 2 * 3 * 192)  # bf16: 1,507,328 forward


def test_fit_block_rates_by_hand():
    attn_s, residual = 100e-6, 500e-6
    block_s = GEMM_S + attn_s + OPS_S + residual
    attn, elem = fit_block_rates(TINY, 2, block_s, attn_s, 1.0, 10.0, 5.0, "bf16")
    assert attn == pytest.approx(3 * ATTN_FLOPS / 100e-6 / 1e12)  # 0.25165824 TFLOP/s
    assert elem == pytest.approx(3 * ELEM_BYTES / 500e-6 / 1e9)  # 9.043968 GB/s
    assert type(attn) is float and type(elem) is float  # (numpy scalars do not dump to YAML)
    # fp32 moves 4 bytes a value: twice the bandwidth for the same residual.
    assert fit_block_rates(TINY, 2, block_s, attn_s, 1.0, 10.0, 5.0, "fp32")[1] == pytest.approx(2 * elem)


def test_fit_block_rates_falls_back_when_nothing_is_left_for_elementwise_work():
    attn_s = 100e-6
    # The block timed faster than its parts timed alone (noise): 50 µs and 1 ms short.
    for block_s in (GEMM_S + attn_s + OPS_S - 50e-6, GEMM_S + attn_s + OPS_S - 1e-3):
        attn, elem = fit_block_rates(TINY, 2, block_s, attn_s, 1.0, 10.0, 5.0, "bf16")
        assert elem == 0.0 and attn == pytest.approx(3 * ATTN_FLOPS / 100e-6 / 1e12)


def test_block_constants_validate_and_round_trip():
    cal = Calibration(gemm_tflops=1.0, attn_tflops=0.25, elem_gb_per_s=9.5, source="probe")
    assert from_dict(Calibration, to_dict(cal)) == cal
    assert from_dict(Calibration, yaml.safe_load(yaml.safe_dump(to_dict(cal)))) == cal
    for key in ("attn_tflops", "elem_gb_per_s", "loss_gb_per_s"):
        with pytest.raises(ValueError, match=key):
            replace(cal, **{key: -1.0}).validate()


def test_probes_time_a_real_tiny_block():
    spec = model_spec("tiny", global_batch=2)
    # Default repeats: the first calls of a process are slow (kernel set-up), and the
    # best of 5 (3) rides out a loaded host. Together about 0.1 s after torch's import.
    attn = probe_attention(spec, 2)
    block = probe_block(spec, 2)
    assert math.isfinite(attn) and math.isfinite(block) and 0 < attn < block


def test_probe_block_needs_an_ogi_block():
    with pytest.raises(ValueError, match="not an ogi block"):
        probe_block(replace(TINY, gated_mlp=False), 2)
    with pytest.raises(ValueError, match="not an ogi block"):
        probe_block(replace(TINY, ffn_hidden=200), 2)  # not a width ModelConfig can express


def test_fit_loss_rate_by_hand():
    # 2 rows × 128 text slots × 4096 classes = 1,048,576 logits, 32 bytes each: 33,554,432 B.
    # Head GEMMs at 1 TFLOP/s and 10 µs: 3 · (2·256·64·4096 / 1e12 + 10e-6) = 3 · 144.217728 µs.
    head_gemm_s = 3 * (134.217728e-6 + 10e-6)
    assert fit_loss_rate(TINY, 2, head_gemm_s + 8e-3, 1.0, 10.0) == pytest.approx(33_554_432 / 8e-3 / 1e9)  # 4.194304
    assert fit_loss_rate(TINY, 2, head_gemm_s - 1e-4, 1.0, 10.0) == 0.0  # nothing left: copy bandwidth


def test_loss_bandwidth_prices_the_lm_loss():
    from ogi_ray.parallel.cost import evaluate
    from ogi_ray.parallel.plan import ParallelPlan
    from ogi_ray.parallel.planner import topology_for_world
    from ogi_ray.parallel.shapes import Layouts
    from ogi_ray.parallel.topology import load_topology

    base = Calibration(gemm_tflops=1.0, copy_gb_per_s=10.0)
    topo = topology_for_world(load_topology("cpu-2"), 1)
    lay = Layouts.from_plans([ParallelPlan(micro_batch_rows=2)])
    t = {g: float(evaluate(TINY, replace(topo, calibration=replace(base, loss_gb_per_s=g)), lay)["step_time_s"][0])
         for g in (0.0, 10.0, 2.0)}
    assert t[10.0] == pytest.approx(t[0.0])  # unprobed: copy bandwidth, 10 GB/s
    # At 2 GB/s the loss (33,554,432 B; the norms term re-runs half of it) takes 5× as long:
    # 1.5 · 33,554,432 · (1/2e9 − 1/10e9) = 20.1326592 ms more.
    assert t[2.0] - t[0.0] == pytest.approx(1.5 * 33_554_432 * (1 / 2e9 - 1 / 10e9))


def test_lm_head_probe_times_a_real_loss():
    head = probe_lm_head(model_spec("tiny", global_batch=2), 2)
    assert math.isfinite(head) and head > 0


def test_block_seconds_by_hand():
    from ogi_ray.parallel.cost import block_seconds

    # tp 1: forward + backward = 3 × (GEMMs 27,262,976 FLOPs at 1 TFLOP/s + attention
    # 8,388,608 FLOPs at 0.5 TFLOP/s + 1,507,328 element-wise bytes at 10 GB/s) + 263 ops
    # at 5 µs; no copy bandwidth (no roofline term), no TP traffic.
    cal = Calibration(gemm_tflops=1.0, attn_tflops=0.5, elem_gb_per_s=10.0, op_overhead_us=5.0)
    compute, comm = block_seconds(TINY, 2, 1, cal)
    assert compute == pytest.approx(3 * (27.262976 + 16.777216 + 150.7328) * 1e-6 + 1315e-6)
    assert comm == 0.0
    # tp 2 halves the GEMMs and attention; of the element-wise bytes per token only the
    # rotary/casts and the MLP part halve (without SP the norms and residuals do not):
    # 20·64 + 8·64/2 + 2·3·192/2 = 2,112 B-values, × 256 tokens × 2 B = 1,081,344 B. It adds
    # 4 all-reduces of 256 × 64 bf16 values (32,768 B): each 2·(1/2)·32,768 B / (8 Gbit/s =
    # 1e9 B/s) + 2·10 µs.
    compute2, comm2 = block_seconds(TINY, 2, 2, replace(cal, intra_bus_gbps=8.0, intra_latency_us=10.0))
    assert compute2 == pytest.approx(3 * (13.631488 + 8.388608 + 108.1344) * 1e-6 + 1315e-6)
    assert comm2 == pytest.approx(4 * (32_768 / 1e9 + 20e-6))


def test_fsdp_and_tp_overheads_by_hand():
    from ogi_ray.parallel.probe_ranks import fit_fsdp_overhead, fit_tp_overhead

    # 2 blocks of 2·(4·64² + 3·64·192 + 2·64) = 2·(16,384 + 36,864 + 128) = 106,752 fp32
    # parameters (427,008 B). Ring, 3 passes at 8 Gbit/s (1e9 B/s), 10 µs: 3·(½·427,008 B
    # / 1e9 + 3 groups · 10 µs) = 730.512 µs. 30 ms of extra time less that, over 3 groups,
    # less 100 µs of hooks: (30,000 − 730.512) / 3 − 100 = 9,656.496 µs.
    got = fit_fsdp_overhead(TINY, 2, 2, 0.050, 0.020, 8.0, 10.0, 100.0)
    assert got == pytest.approx(9_656.496)
    assert fit_fsdp_overhead(TINY, 2, 2, 0.020, 0.020, 8.0, 10.0, 100.0) == 0.0
    # TP: 2 blocks measured at twice (the tp-2 block of test_block_seconds_by_hand + 7
    # modules × 1 ms): 1 ms a module is left.
    cal = Calibration(gemm_tflops=1.0, attn_tflops=0.5, elem_gb_per_s=10.0, op_overhead_us=5.0,
                      intra_bus_gbps=8.0, intra_latency_us=10.0)
    per_block = 3 * (13.631488 + 8.388608 + 108.1344) * 1e-6 + 1315e-6 + 4 * (32_768 / 1e9 + 20e-6)
    assert fit_tp_overhead(TINY, 2, 2, 2 * (per_block + 7e-3), cal) == pytest.approx(1000.0)


def test_fsdp_and_tp_probes_run_two_real_ranks():
    from ogi_ray.parallel.probe_ranks import probe_fsdp, probe_tp

    spec = model_spec("tiny", global_batch=2)
    sharded, plain = probe_fsdp(spec, 2, repeats=2)
    # FSDP2 gathers and reduce-scatters around the same arithmetic: it cannot be faster.
    assert math.isfinite(sharded) and 0 < plain < sharded
    tp = probe_tp(spec, 2, repeats=2)
    assert math.isfinite(tp) and tp > 0
