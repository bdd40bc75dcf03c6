"""Device, collective backend and mixed-precision choice, made in one place.

``auto`` picks CUDA + NCCL when a GPU is visible, else CPU + gloo. bf16 autocast is
used on GPUs and on CPUs that report AMX/bf16 support, unless the config says otherwise.
Everything else in the project asks this module instead of testing for CUDA itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(kw_only=True)
class DeviceConfig:
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "fp32"


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
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
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
