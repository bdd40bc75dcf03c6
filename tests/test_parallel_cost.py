"""Cost and memory model terms against hand calculations, and the calibration fit.

Every expected number is arithmetic written out here (or a recorded measurement of a
real step on this machine), never a value the code under test computed. Pure numpy."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ogi_ray.parallel.calibrate import Measurement, fit_calibration, fit_gemm, gemm_shapes
from ogi_ray.parallel.cost import (
    _block_compute,
    block_attention_flops,
    block_elementwise_bytes,
    evaluate,
    rates,
)
from ogi_ray.parallel.memory import evaluate_memory, predict_peak_memory, stored_per_token
from ogi_ray.parallel.plan import ParallelPlan
from ogi_ray.parallel.shapes import Layouts, ModelSpec
from ogi_ray.parallel.topology import Calibration, load_topology

MiB = 2**20
# A 4-block GELU model: layer matmuls 4h² + 2hf = 12,582,912 at h = 1024, f = 4096; two norm
# weights per block; 1,000,000 root parameters (half embedding, half head: no vocabulary).
LAYER, BLOCK = 4 * 1024**2 + 2 * 1024 * 4096, 4 * 1024**2 + 2 * 1024 * 4096 + 2 * 1024
WIDE = ModelSpec(name="wide", params=4 * BLOCK + 1e6, layers=4, hidden=1024, heads=16,
                 seq_len=512, global_batch=32, ffn_hidden=4096)
# The ogi `tiny` preset, text only, written out: 631,168 parameters (2 blocks of 53,376,
# token embedding and LM head 4096 × 64 each, final norm and the text segment embedding).
TINY = ModelSpec(name="tiny", params=631_168, layers=2, hidden=64, heads=4, seq_len=128,
                 global_batch=8, vocab=4096, ffn_hidden=192, gated_mlp=True, lm_tokens=128,
                 dense_mask=True)


def lay(**kw) -> Layouts:
    d = dict(dp=1, tp=1, pp=1, m=1, rows=1, ac=0, sp=False, raf=True) | kw
    return Layouts(**{k: [v] for k, v in d.items()})


def one(spec, topo, precision="bf16", **kw) -> dict[str, float]:
    return {k: float(v[0]) for k, v in evaluate(spec, topo, lay(**kw), precision).items()}


def mem(spec, precision="bf16", **kw) -> dict[str, float]:
    return {k: float(v[0]) for k, v in evaluate_memory(spec, lay(**kw), precision).items()}


@pytest.fixture(scope="module")
def dgx2():
    """Two DGX A100 nodes: NVLink 300 GB/s and one 200 Gb/s HDR NIC per GPU, each way."""
    return load_topology("a100-8x8").for_world(16)


# --- links ------------------------------------------------------------------------------


def test_dp_group_shares_the_nics_with_the_other_tp_groups(dgx2):
    # 80 % of line rate (NCCL bus bandwidth); a node has 8 × 25 GB/s of NICs.
    nic, nvlink = 0.8 * 200e9 / 8, 0.8 * 2400e9 / 8
    # tp = 1, dp = 16: one DP group, 8 members per node. Its ring leaves each node on 8
    # NICs at once (one NCCL channel per NIC): the whole node's 160 GB/s.
    P1 = 4 * BLOCK + 1e6
    r = one(WIDE, dgx2, dp=16, rows=2)
    ring = 15 / 16 * 4 * P1  # fp32 gather / reduce-scatter bytes per rank, one pass
    assert r["dp_comm_s"] == pytest.approx(3 * (ring / (8 * nic) + 5 * 15 * 10e-6))
    # The per-device figure (one NIC per group, what the model used before) is 8× slower.
    assert r["dp_comm_s"] < 3 * (ring / nic) / 4
    # tp = 8, dp = 2: eight DP groups (one per tp rank) cross the same 8 NICs: one each.
    P8 = 4 * (LAYER / 8 + 2 * 1024) + 1e6
    r8 = one(WIDE, dgx2, dp=2, tp=8, rows=16)
    assert r8["dp_comm_s"] == pytest.approx(3 * (1 / 2 * 4 * P8 / nic + 5 * 1 * 10e-6))
    # Inside one node the ring runs on NVLink.
    r_in = one(WIDE, dgx2, dp=2, tp=4, pp=2, m=2, rows=8, raf=False)
    assert r_in["dp_comm_s"] == pytest.approx(2 * (1 / 2 * 4 * (2 * (LAYER / 4 + 2048) + 5e5) / nvlink + 3 * 5e-6))
    assert nvlink > 8 * nic / 4  # (so the group share would have been the NVLink figure anyway)


def test_dp_ring_is_no_faster_than_its_intra_node_hops(dgx2):
    pcie = replace(dgx2, intra_node_gbps=256)  # PCIe Gen4 ×16 inside the node
    r = one(WIDE, pcie, dp=16, rows=2)
    P1 = 4 * BLOCK + 1e6
    assert r["dp_comm_s"] == pytest.approx(3 * (15 / 16 * 4 * P1 / (0.8 * 256e9 / 8) + 5 * 15 * 10e-6))


def test_tp_collectives_with_and_without_sequence_parallelism(dgx2):
    b, s, h, t = 2, 512, 1024, 4
    msg = b * s * h
    bw, a = 0.8 * 2400e9 / 8, 5e-6
    ar = 2 * 3 / 4 * 2 * msg / bw + 2 * 3 * a  # all-reduce of bf16 values
    r = one(WIDE, dgx2, dp=4, tp=t, rows=b, m=2)
    # 2 all-reduces forward (after wo, w2) and 2 backward (column inputs), 4 blocks, 2 mbs.
    assert r["tp_comm_s"] == pytest.approx(2 * 4 * 4 * ar)
    # SP: all-gather of the fp32 norm output + reduce-scatter of the bf16 output, twice
    # per block forward, the reverse backward: 1.5× the bytes under autocast.
    ag32, rs16 = 3 / 4 * 4 * msg / bw + 3 * a, 3 / 4 * 2 * msg / bw + 3 * a
    rsp = one(WIDE, dgx2, dp=4, tp=t, rows=b, m=2, sp=True)
    assert rsp["tp_comm_s"] == pytest.approx(2 * 4 * 4 * (ag32 + rs16))
    # In fp32 both are the same ring volume.
    f32 = one(WIDE, dgx2, "fp32", dp=4, tp=t, rows=b, m=2)["tp_comm_s"]
    f32_sp = one(WIDE, dgx2, "fp32", dp=4, tp=t, rows=b, m=2, sp=True)["tp_comm_s"]
    assert f32_sp == pytest.approx(f32)


def test_pipeline_sends_cross_the_nic(dgx2):
    b, s, h = 4, 512, 1024
    nic, a = 0.8 * 200e9 / 8, 10e-6
    # pp = 2 over 2 nodes: every tp rank sends the whole fp32 residual stream (replicated
    # over tp without SP), forward, and its gradient back.
    r = one(WIDE, dgx2, dp=1, tp=8, pp=2, m=8, rows=4, raf=False)
    assert r["pp_p2p_s"] == pytest.approx(8 * 2 * (a + 4 * b * s * h / nic))
    rsp = one(WIDE, dgx2, dp=1, tp=8, pp=2, m=8, rows=4, raf=False, sp=True)
    assert rsp["pp_p2p_s"] == pytest.approx(8 * 2 * (a + 4 * b * s * h / 8 / nic))
    assert r["bubble_fraction"] == pytest.approx(1 / 9)


def test_full_checkpointing_recomputes_one_forward(dgx2):
    topo = replace(dgx2, hbm_gb_per_s=0.0)  # pure FLOP roofline; no op overhead uncalibrated
    none = one(WIDE, topo, dp=16, rows=2)
    full = one(WIDE, topo, dp=16, rows=2, ac=2)
    sel = one(WIDE, topo, dp=16, rows=2, ac=1)
    # backward = 2 × forward, no head (vocabulary 0): full AC adds a third of the compute.
    assert full["recompute_s"] == pytest.approx(none["compute_s"] / 3)
    assert full["compute_s"] == pytest.approx(none["compute_s"] * 4 / 3)
    # Selective recomputes element-wise work only: nothing without a memory-bound term.
    assert sel["recompute_s"] == 0 and sel["compute_s"] == pytest.approx(none["compute_s"])


def test_calibrated_gemm_rate_replaces_the_default_efficiency(dgx2):
    topo = replace(dgx2, hbm_gb_per_s=0.0)
    base = one(WIDE, topo, dp=16, rows=2)["compute_s"]
    # 0.75 × 312 TFLOP/s uncalibrated; a probe that measured 117 TFLOP/s halves the rate.
    probed = replace(topo, calibration=Calibration(gemm_tflops=0.75 * 312 / 2))
    assert one(WIDE, probed, dp=16, rows=2)["compute_s"] == pytest.approx(2 * base)


def _block(spec, cal, precision="bf16", **kw) -> dict[str, float]:
    """One block's forward parts on cpu-2 under ``cal``."""
    topo = replace(load_topology("cpu-2"), calibration=cal)
    e = 2.0 if precision == "bf16" else 4.0
    return {k: float(v[0]) for k, v in _block_compute(spec, lay(**kw), rates(topo, precision), e).items()}


def test_probed_attention_rate_replaces_the_gemm_rate():
    # tiny, 2 rows: 4 · 2 · 128² · 64 = 8,388,608 FLOPs of dense masked attention forward.
    assert float(block_attention_flops(TINY, 2, 1)) == 8_388_608
    unprobed = _block(TINY, Calibration(gemm_tflops=2.0), rows=2)["attn"]  # at the GEMM rate
    assert unprobed == pytest.approx(8_388_608 / 2e12)
    probed = _block(TINY, Calibration(gemm_tflops=2.0, attn_tflops=1.0), rows=2)["attn"]
    assert probed == pytest.approx(2 * unprobed)
    # Unprobed attention also pays a GEMM call's overhead (10 µs); the probed rate has it inside.
    with_call = Calibration(gemm_tflops=2.0, gemm_overhead_us=10.0)
    assert _block(TINY, with_call, rows=2)["attn"] == pytest.approx(8_388_608 / 2e12 + 10e-6)
    assert _block(TINY, replace(with_call, attn_tflops=1.0), rows=2)["attn"] == pytest.approx(8_388_608 / 1e12)
    # Under tp = 2 each rank runs half the heads.
    assert _block(TINY, Calibration(attn_tflops=1.0), rows=2, tp=2)["attn"] == pytest.approx(4_194_304 / 1e12)


def test_probed_elementwise_bandwidth_replaces_copy_bandwidth():
    # tiny (h 64, f 192, gated: mlp_in 2), 2 rows of 128 tokens, bf16 (2 bytes a value):
    # per token 20·64 + 8·64 + 2·3·192 = 2944 values, 256 · 2 · 2944 = 1,507,328 bytes.
    assert float(block_elementwise_bytes(TINY, 2, 1, False, 2.0)) == 1_507_328
    cal = Calibration(gemm_tflops=1.0, copy_gb_per_s=50.0, elem_gb_per_s=10.0)
    assert _block(TINY, cal, rows=2)["elem"] == pytest.approx(1_507_328 / 10e9)
    # Unprobed: copy bandwidth (50 GB/s).
    assert _block(TINY, replace(cal, elem_gb_per_s=0.0), rows=2)["elem"] == pytest.approx(1_507_328 / 50e9)
    # tp = 2 with SP splits every term: 640 + 256 + 576 = 1472 values a token.
    assert _block(TINY, cal, rows=2, tp=2, sp=True)["elem"] == pytest.approx(256 * 2 * 1472 / 10e9)
    # fp32: 4 bytes a value.
    assert _block(TINY, cal, "fp32", rows=2)["elem"] == pytest.approx(256 * 4 * 2944 / 10e9)


def test_shared_node_splits_the_probed_block_rates():
    cal = Calibration(attn_tflops=0.4, elem_gb_per_s=8.0)
    four = replace(load_topology("cpu-2"), calibration=cal).shared_node(4)  # 2 devices → 4 workers
    assert (four.calibration.attn_tflops, four.calibration.elem_gb_per_s) == pytest.approx((0.2, 4.0))


def test_wrapper_overheads_per_module_and_group():
    # 1 ms per TP-wrapped module, 2 ms per FSDP2 group, per micro-batch. tiny at tp = 2,
    # 2 blocks, 3 micro-batches: 7 linears per block (11 with SP's norms and re-layouts),
    # 3 FSDP2 groups (2 blocks + the root).
    topo = load_topology("cpu-2")
    cal = replace(topo, calibration=Calibration(tp_module_overhead_us=1000, fsdp_group_overhead_us=2000))
    for sp, modules in ((False, 7), (True, 11)):
        base = one(TINY, topo, tp=2, m=3, rows=2, sp=sp)["compute_s"]
        more = one(TINY, cal, tp=2, m=3, rows=2, sp=sp)["compute_s"]
        assert more - base == pytest.approx(3 * (2 * modules * 1e-3 + 3 * 2e-3))


# --- memory -----------------------------------------------------------------------------


def test_tiny_peak_by_hand():
    # bf16 autocast, one process, 2 rows of 128 slots (256 tokens). Peak in the loss's backward:
    state = 12 * 631_168  # fp32 parameters + Adam m, v (no gradients yet: set_to_none)
    copies = 2 * (2 * (4 * 64**2 + 3 * 64 * 192) + 4096 * 64)  # bf16 copies of matmul weights
    per_token = (16 * 64 + 8) + 5 * 2 * 64 + 5 * 2 * 64 + 4 * 4 + 4 * 2 * 192  # see stored_per_token
    blocks = 2 * (256 * per_token + 128 * 128 * 2)  # + the (S, S) bf16 mask per block
    head = 256 * (12 * 64 + 4) + 2 * 128 * 2 * 64  # final norm; the LM head's bf16 input
    loss = 2 * 4096 * (4 * 128 + 12 * 127)  # 2 bf16 + 3 fp32 logit-sized buffers
    r = mem(TINY, rows=2)
    assert r["peak_bytes"] == state + copies + blocks + head + loss == 27_264_512


def test_recorded_peaks_on_this_machine():
    # Live-tensor traces (a TorchDispatchMode over storages) of the second train_step of
    # the real model, 8 rows: tiny 80.09 MiB (bf16) and 83.44 MiB (fp32) in one process.
    for precision, measured in (("bf16", 80.09), ("fp32", 83.44)):
        assert mem(TINY, precision, rows=8)["peak_bytes"] / MiB == pytest.approx(measured, rel=0.01)


def test_checkpointing_lowers_activations():
    per = [float(stored_per_token(TINY, 1, False, np.array(ac), 2.0)) for ac in (0, 1, 2)]
    assert per[0] > per[1] > per[2] == 4 * 64  # full: the fp32 block input only
    peaks = [mem(TINY, rows=8, ac=ac)["peak_bytes"] for ac in (0, 1, 2)]
    assert peaks[0] > peaks[1] > peaks[2]


def test_sequence_parallel_splits_the_norm_region_by_tp():
    t = 4
    for ac, region in ((0, 16 * 64 + 8), (2, 4 * 64)):
        on = float(stored_per_token(TINY, t, True, np.array(ac), 2.0))
        off = float(stored_per_token(TINY, t, False, np.array(ac), 2.0))
        assert off - on == pytest.approx(region * (1 - 1 / t))


def test_keeping_parameters_gathered_costs_the_unsharded_model():
    # dp = 2, two micro-batches: the second one's loss backward starts with every group
    # still gathered (fp32, 4 bytes × 631,168) when not resharded after forward.
    kept = mem(TINY, dp=2, m=2, rows=4, raf=False)
    freed = mem(TINY, dp=2, m=2, rows=4, raf=True)
    assert kept["peak_bytes"] - freed["peak_bytes"] == pytest.approx(4 * 631_168)


def test_fsdp_shards_parameters_and_adam_state():
    r = mem(TINY, dp=4, rows=2)
    assert r["params"] + r["optimizer"] == pytest.approx(12 * 631_168 / 4)


def test_first_pipeline_stage_holds_pp_microbatches():
    # Without a vocabulary (no loss buffers) the first of 2 stages is the busiest: 1F1B
    # keeps min(m, pp) = 2 micro-batches of its one block in flight. Its peak is in a
    # backward: the other micro-batch, the one being differentiated, and two fp32
    # (B, S, D) gradient buffers.
    per_token = (16 * 64 + 8) + 10 * 64 + 10 * 64 + 16 + 8 * 192
    r = mem(replace(TINY, vocab=0), pp=2, m=4, rows=2, raf=False)
    assert r["first_stage"] and r["moment"] == 3  # MOMENTS[3] == "backward"
    assert r["activations"] == pytest.approx(2 * (256 * per_token + 128 * 128 * 2) + 8 * 256 * 64)


def test_predict_peak_memory_takes_a_plan():
    p = ParallelPlan(dp=1, micro_batch_rows=2)
    assert predict_peak_memory(p, TINY).peak_bytes == 27_264_512


# --- calibration ------------------------------------------------------------------------


def test_fit_gemm_recovers_rate_and_overhead():
    shapes = [(256, 64, 64), (256, 64, 192), (4096, 1024, 1024), (8192, 2048, 2048)]
    seconds = [20e-6 + 2 * m * k * n / 2e12 for m, k, n in shapes]  # 20 µs + FLOPs at 2 TFLOP/s
    tflops, alpha = fit_gemm(shapes, seconds)
    assert tflops == pytest.approx(2.0) and alpha == pytest.approx(20.0)
    assert type(tflops) is float and type(alpha) is float  # a Calibration of them dumps to YAML


def test_gemm_shapes_are_the_models():
    shapes = gemm_shapes(TINY, rows=2, tp=2)
    assert shapes == [(256, 64, 32)] * 3 + [(256, 32, 64)] + [(256, 64, 96)] * 2 + [(256, 96, 64), (256, 64, 4096)]


def test_fit_calibration_inverts_the_linear_step_model():
    topo = load_topology("cpu-2").shared_node(4)
    plans = [ParallelPlan(dp=4, micro_batch_rows=2), ParallelPlan(dp=2, tp=2, micro_batch_rows=4),
             ParallelPlan(dp=1, tp=4, micro_batch_rows=8), ParallelPlan(dp=4, microbatches=2, micro_batch_rows=1),
             ParallelPlan(dp=2, pp=2, microbatches=2, micro_batch_rows=2, reshard_after_forward=False)]
    raw = {k: v for k, v in evaluate(TINY, topo, Layouts.from_plans(plans)).items()}
    peaks = evaluate_memory(TINY, Layouts.from_plans(plans))["peak_bytes"]
    # "Measured": 1.5 × compute, 2 × communication, 10 ms per step; 1.1 × memory + 50 MiB.
    ms = [Measurement(p, 1.5 * c + 2.0 * k + 0.010, 1.1 * m + 50 * MiB)
          for p, c, k, m in zip(plans, raw["compute_part_s"], raw["comm_part_s"], peaks, strict=True)]
    cal, rep = fit_calibration(ms, TINY, topo, overhead=True)
    assert (cal.compute_scale, cal.comm_scale, cal.step_overhead_s) == pytest.approx((1.5, 2.0, 0.010))
    assert (cal.memory_scale, cal.memory_overhead_mib) == pytest.approx((1.1, 50.0))
    assert max(abs(e) for e in rep.step_error + rep.memory_error) < 1e-9 and rep.fastest_right


def test_fit_calibration_falls_back_when_steps_cannot_separate_the_scales():
    # Two single-process plans: no communication, so only the compute scale is fitted,
    # and it is the ratio of measured to predicted compute (0.8 s measured for 0.4 s: 2×).
    topo = load_topology("cpu-2").for_world(1)
    plans = [ParallelPlan(micro_batch_rows=8), ParallelPlan(microbatches=2, micro_batch_rows=4)]
    c = evaluate(TINY, topo, Layouts.from_plans(plans))["compute_part_s"]
    cal, rep = fit_calibration([Measurement(p, 2.0 * x) for p, x in zip(plans, c, strict=True)], TINY, topo)
    assert (cal.compute_scale, cal.comm_scale, cal.step_overhead_s) == pytest.approx((2.0, 1.0, 0.0))

