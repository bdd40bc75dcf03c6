"""Device, collective backend and mixed-precision choice, made in one place.

``auto`` picks CUDA when a GPU is visible, else the CPU. bf16 autocast is used on GPUs
and on CPUs that report AMX/bf16 support, unless the config says otherwise. Everything
else in the project asks this module instead of testing for CUDA itself.

Collectives: on GPUs the process group is ``"cpu:gloo,cuda:nccl"`` (``process_group_
backend``): NCCL carries the device tensors (FSDP2, TP, pipeline activations, shard
sends while hashing), gloo the host-side control plane — per-step metric reductions,
object broadcasts and gathers, DCP's save/load planning — which a NCCL-only group
cannot carry ("No backend type associated with device type cpu"). On CPUs it is gloo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(kw_only=True)
class DeviceConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast (fp32 master weights and optimizer state) on GPUs and on CPUs
    # with bf16 matrix units (AMX, AVX512-BF16), fp32 elsewhere.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile each transformer block (after TP, before FSDP, as torchtitan does):
    # fused elementwise kernels around the matmuls. Costs a compile on the first step.
    compile: bool = False


@dataclass(frozen=True)
class Placement:
    device: torch.device
    backend: str
    autocast_dtype: torch.dtype | None

    @property
    def use_gpu(self) -> bool:
        return self.device.type == "cuda"


def cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve(cfg: DeviceConfig, local_rank: int = 0) -> Placement:
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if want_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("device: 'cuda' requested but no GPU is visible")
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)  # NCCL and torch.cuda.current_device() agree
    else:
        device = torch.device("cpu")
    backend = process_group_backend(want_cuda)
    if cfg.precision == "bf16" or (
        cfg.precision == "auto" and (want_cuda or cpu_has_bf16())
    ):
        dtype = torch.bfloat16
    else:
        dtype = None
    return Placement(device, backend, dtype)


def use_gpu(cfg: DeviceConfig) -> bool:
    """What the Ray driver asks for (the driver may have no GPU itself: trust config)."""
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def attention_kernel(device: torch.device) -> str:
    """The attention a model runs on ``device`` (MultimodalTransformer.attention_kernel):
    block-sparse FlexAttention on CUDA, which skips the blocks the layout mask leaves
    empty; dense masked SDPA on CPU (torch 2.13 has no FlexAttention backward there, and
    CPU is where replay is checked bit for bit)."""
    return "flex" if device.type == "cuda" else "sdpa"


def prefetch_batches(device: torch.device) -> bool:
    """Whether a rank collates its next batch on a background thread during the step.
    On CUDA, yes: the step's host thread mostly waits on the GPU, so the collate overlaps.
    On CPU, no: the collate and the step share the cores and the GIL. With small on 2
    cores the step took 0.39 s with prefetch and 0.28 s without, against 0.27 s for the
    bare loop, while the collate itself is 2 % of a step (docs/parallel_apply.md)."""
    return device.type == "cuda"


def process_group_backend(gpu: bool, accelerator: str = "nccl") -> str:
    """The torch.distributed backend string for Ray Train's ``TorchConfig(backend=...)``:
    every device type the run's collectives use gets a backend, the CPU always gloo.
    (``accelerator`` is only swapped in tests, where gloo stands in for NCCL.)"""
    return f"cpu:gloo,cuda:{accelerator}" if gpu else "gloo"


# Dense peak FLOP/s per device from vendor datasheets (no sparsity).
PEAK_TABLE = {
    ("H100", "bf16"): 989e12, ("H100", "fp32"): 67e12,
    ("H200", "bf16"): 989e12, ("H200", "fp32"): 67e12,
    ("A100", "bf16"): 312e12, ("A100", "fp32"): 19.5e12,
}  # fmt: skip


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048),
                         trials: int = 3) -> float:  # fmt: skip
    """Best achieved FLOP/s of square matmuls: the peak used for MFU when no table entry
    applies. Best over sizes and trials, because a single short timing on a shared CPU
    read anywhere from 0.44 to 1.1 TFLOP/s for the same bf16 matmul (2 AMX cores)."""
    return measure_gemm_flops(device, dtype, [(n, n, n) for n in sizes], trials)


def linear_gemm_shapes(model: torch.nn.Module, tokens: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of each distinct ``nn.Linear`` forward matmul of ``model`` at ``tokens``
    rows of activations (batch × sequence): the GEMMs the step actually runs."""
    shapes = {(tokens, m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return sorted(shapes)


def measure_gemm_flops(device: torch.device, dtype: torch.dtype, shapes: list[tuple[int, int, int]],
                       trials: int = 3, seconds: float = 0.05) -> float:  # fmt: skip
    """Best achieved FLOP/s over ``shapes`` (M, K, N) and ``trials`` timings of about
    ``seconds`` each (after one warm-up product and one that sizes the trials); 0.0 for no
    shapes."""
    import time

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        a @ b  # warm up kernels and caches
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        iters = max(2, int(seconds / max(time.perf_counter() - t, 1e-6)))
        for _ in range(trials):
            sync()
            t = time.perf_counter()
            for _ in range(iters):
                a @ b
            sync()
            best = max(best, 2 * m * k * n * iters / (time.perf_counter() - t))
    return best


def peak_flops(p: Placement, shapes: list[tuple[int, int, int]] | None = None) -> float:
    """The peak FLOP/s MFU is measured against: the datasheet for a GPU in PEAK_TABLE;
    otherwise the best of several probes, square matmuls and the model's own GEMM
    ``shapes`` (linear_gemm_shapes), so that one unlucky timing on a shared host (a single
    square probe read 1.03 and 2.25 TFLOP/s in one run) cannot halve or double the MFU.
    Take it once per run and record it with the run (the trainer broadcasts rank 0's)."""
    kind = "bf16" if p.autocast_dtype == torch.bfloat16 else "fp32"
    if p.device.type == "cuda":
        name = torch.cuda.get_device_name(p.device)
        for (gpu, k), v in PEAK_TABLE.items():
            if gpu in name and k == kind:
                return v
    dtype = p.autocast_dtype or torch.float32
    return max(measure_matmul_flops(p.device, dtype), measure_gemm_flops(p.device, dtype, shapes or []))
