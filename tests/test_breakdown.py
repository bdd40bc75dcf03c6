"""The step-time breakdown's categories, and the peak probe at the model's GEMM shapes."""

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from ogi_ray.parallel.device import linear_gemm_shapes, measure_gemm_flops
from ogi_ray.train.breakdown import CATEGORIES, categorize, time_breakdown


def test_categories_by_name_and_enclosing_op():
    assert categorize("aten::mm", ["autograd::engine::evaluate_function: MmBackward0"]) == "matmul"
    assert categorize("aten::addmm", ["aten::linear"]) == "matmul"
    # The math inside SDPA's backward is attention time, not matmul or elementwise.
    assert categorize("aten::bmm", ["ScaledDotProductFlashAttentionForCpuBackward0"]) == "attention"
    assert categorize("aten::_scaled_dot_product_flash_attention_for_cpu", []) == "attention"
    assert categorize("aten::mul_", ["aten::_foreach_mul_", "Optimizer.step#AdamW.step"]) == "optimizer"
    assert categorize("aten::rms_norm", []) == "elementwise"
    assert categorize("autograd::engine::evaluate_function: AddmmBackward0", []) == "framework"


def test_breakdown_of_a_real_profiled_step_sums_to_one_and_sees_each_part():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64)
    opt = torch.optim.AdamW(lin.parameters())
    x = torch.randn(2, 4, 32, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        import time

        t0 = time.perf_counter()
        for _ in range(2):
            q = lin(x)  # (2, 4, 32, 64): batch, heads, sequence, head dim
            o = F.scaled_dot_product_attention(q, q, q, is_causal=True)
            F.layer_norm(o, (64,)).sum().backward()
            opt.step()
            opt.zero_grad()
        wall = time.perf_counter() - t0
    shares = time_breakdown(prof.events(), wall)
    assert set(shares) == set(CATEGORIES)
    assert abs(sum(shares.values()) - 1.0) < 1e-9
    for k in ("matmul", "attention", "elementwise", "optimizer"):
        assert shares[k] > 0, (k, shares)


def test_gemm_shapes_are_the_distinct_linears_at_the_token_count():
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.Linear(8, 16))
    assert linear_gemm_shapes(m, 32) == [(32, 8, 16), (32, 16, 8)]
    assert measure_gemm_flops(torch.device("cpu"), torch.float32, []) == 0.0
    assert measure_gemm_flops(torch.device("cpu"), torch.float32, [(64, 64, 64)], trials=1, seconds=0.01) > 0
