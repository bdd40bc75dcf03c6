"""Where a training step's time goes, from a torch.profiler trace.

    events = prof.events()                      # torch.profiler.profile(...) over a few steps
    shares = time_breakdown(events, wall_s)     # {"matmul": 0.41, "attention": 0.18, ...}

Each profiled op's *self* time (its own time, children excluded, so nothing is counted
twice) goes to one category:

    optimizer    anything under an ``Optimizer.step`` / ``Optimizer.zero_grad`` annotation
    attention    anything under an SDPA / flash / flex attention op or its backward node
    matmul       the GEMM kernels themselves (mm, addmm, bmm, baddbmm, mkldnn linear)
    elementwise  every other ATen op: norms, activations, copies, casts, reductions, the loss
    framework    autograd-engine nodes, hooks, collectives' Python side: not ATen kernels

and ``python_and_idle`` is the wall time no op accounts for (the Python between ops, and
waiting: for data, for a peer rank, for the scheduler on a shared host). The fractions are
of the profiled wall time, so they sum to 1. Data loading is measured by the caller with
a clock around the batch fetch, not here (it is Python, not ops).
"""

from __future__ import annotations

from typing import Any

CATEGORIES = ("matmul", "attention", "elementwise", "optimizer", "framework", "python_and_idle")

_GEMMS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm", "aten::_addmm_activation",
          "aten::mkldnn_linear", "aten::_mkldnn_linear", "aten::_int_mm", "aten::_scaled_mm"}  # fmt: skip
_ATTENTION = ("scaled_dot_product", "ScaledDotProduct", "flash_attention", "efficient_attention",
              "flex_attention", "FlexAttention", "cudnn_attention")  # fmt: skip


def categorize(name: str, ancestors: list[str]) -> str:
    """The category of an op named ``name`` whose enclosing ops are ``ancestors``
    (innermost first)."""
    chain = [name, *ancestors]
    if any(a.startswith("Optimizer.") for a in chain):
        return "optimizer"
    if any(k in a for a in chain for k in _ATTENTION):
        return "attention"
    if name in _GEMMS:
        return "matmul"
    if name.startswith("aten::"):
        return "elementwise"
    return "framework"


def _ancestors(event: Any) -> list[str]:
    out, p = [], event.cpu_parent
    while p is not None:
        out.append(p.name)
        p = p.cpu_parent
    return out


def time_breakdown(events: Any, wall_s: float, *, device: bool = False) -> dict[str, float]:
    """Fractions of ``wall_s`` per category (CATEGORIES) over profiler ``events`` (a
    ``prof.events()`` list; self times in µs): CPU time, or with ``device`` the GPU
    kernel time each op launched (on CUDA the CPU side only enqueues). On CPU, autograd's
    backward runs on the calling thread, so forward and backward both count."""
    spent = dict.fromkeys(CATEGORIES, 0.0)
    for e in events:
        us = e.self_device_time_total if device else e.self_cpu_time_total
        spent[categorize(e.name, _ancestors(e))] += us / 1e6
    busy = sum(spent.values())
    spent["python_and_idle"] = max(wall_s - busy, 0.0)
    total = max(wall_s, busy)
    return {k: v / total for k, v in spent.items()}
