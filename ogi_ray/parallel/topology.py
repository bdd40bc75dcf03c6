"""Cluster topology: what the planner needs to know about the hardware, and where it comes from.

A :class:`Topology` is a homogeneous tier of ``nodes`` × ``gpus_per_node`` devices with
a per-device peak, memory and HBM bandwidth, and two links (inside a node, between
nodes). It is filled in one of two ways and then handed to the planner unchanged:

    YAML file (a cluster you plan for) ──load_topology──┐
    Ray tasks on the tier (discover.py) ──to_topology───┴─► Topology ─► planner.plan(...)
    probes and measured steps (calibrate.py) ──────────────► Topology.calibration

The datasheet side (peak, bandwidths, latencies) says what the hardware is; the nested
:class:`Calibration` says what this software reaches on it (matmul rate at the model's
own shapes, attention rate, element-wise and copy bandwidth, collective bus bandwidth,
constants fitted to measured steps).
A zero in it means "not measured": the cost model then falls back to the datasheet
figure times a published efficiency (cost.py, ``DEFAULT_*``).

Units, chosen to match how vendors publish them:
  * ``peak_tflops``: dense (no sparsity) bf16 TFLOP/s per device (fp32 for CPUs);
  * ``hbm_gib``: memory per device in GiB; ``hbm_gb_per_s``: its bandwidth in GB/s;
  * ``intra_node_gbps`` / ``inter_node_gbps``: Gbit/s **per device, per direction**. NVIDIA
    quotes NVLink as a bidirectional total (H100: 900 GB/s = 450 GB/s each way = 3600
    Gbit/s); InfiniBand is quoted per port and direction (NDR: 400 Gbit/s), and DGX-class
    nodes have one NIC per GPU, so the NIC rate is the per-device figure.

``GPU_SPECS`` holds published numbers used by discovery (and to check the example
YAML files); each entry names its source.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from ogi_ray.config import from_dict, load_yaml, to_dict

TOPOLOGY_DIR = Path(__file__).with_name("topologies")


@dataclass(kw_only=True)
class Calibration:
    """Measured and fitted constants of the cost model; 0 (or None) = not measured."""

    gemm_tflops: float = 0.0  # achieved matmul TFLOP/s per device at the model's GEMM shapes
    gemm_overhead_us: float = 0.0  # fixed time per GEMM call (dispatch, launch), fitted with it
    copy_gb_per_s: float = 0.0  # achieved memory copy bandwidth (read + write), GB/s per device
    op_overhead_us: float = 0.0  # fixed time per non-GEMM op of an eager step (autograd included)
    # One block's dense masked attention and element-wise chain (calibrate.probe_block),
    # in the cost model's own counts (cost.block_attention_flops, block_elementwise_bytes);
    # 0: attention at gemm_tflops, element-wise work at copy_gb_per_s.
    attn_tflops: float = 0.0  # achieved rate of the attention kernel, forward + backward
    elem_gb_per_s: float = 0.0  # effective bandwidth of the element-wise chain, GB/s
    # The LM loss (fp32 log-softmax over the logits, forward + backward) in cost.lm_loss_bytes
    # (calibrate.probe_lm_head); 0: at copy_gb_per_s.
    loss_gb_per_s: float = 0.0
    # Python-side cost per micro-batch (forward + backward) of one TP/SP-parallelised module
    # (DTensor dispatch, redistributes) and of one FSDP2 group (hooks, copy-in/out).
    tp_module_overhead_us: float = 0.0
    fsdp_group_overhead_us: float = 0.0
    # Per FSDP2 group and micro-batch when dp > 1, beyond the ring model's transfers and the
    # hooks: copy-in/out and the waits between busy ranks (probe_ranks.probe_fsdp).
    dp_group_overhead_us: float = 0.0
    intra_bus_gbps: float = 0.0  # measured ring bus bandwidth inside a node, Gbit/s per device
    inter_bus_gbps: float = 0.0  # the same between nodes (one group alone on the NICs)
    intra_latency_us: float = 0.0  # measured alpha per ring step; 0: the topology's figure
    inter_latency_us: float = 0.0
    overlap: float | None = None  # fraction of DP traffic hidden behind compute; None: default
    # Fitted to measured step times and peaks (calibrate.fit_calibration); 1 and 0 = unfitted.
    compute_scale: float = 1.0
    comm_scale: float = 1.0
    step_overhead_s: float = 0.0
    memory_scale: float = 1.0
    memory_overhead_mib: float = 0.0  # per process: allocator slack, runtime, CUDA context
    source: str = ""

    def validate(self) -> None:
        for key in ("gemm_tflops", "gemm_overhead_us", "copy_gb_per_s", "op_overhead_us",
                    "attn_tflops", "elem_gb_per_s", "loss_gb_per_s", "tp_module_overhead_us", "fsdp_group_overhead_us", "dp_group_overhead_us",
                    "intra_bus_gbps", "inter_bus_gbps", "intra_latency_us", "inter_latency_us",
                    "step_overhead_s", "memory_overhead_mib"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: must be >= 0, got {getattr(self, key)}")
        for key in ("compute_scale", "comm_scale", "memory_scale"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)}")
        if self.overlap is not None and not 0 <= self.overlap <= 1:
            raise ValueError(f"overlap: must be in [0, 1], got {self.overlap}")


@dataclass(kw_only=True)
class Topology:
    nodes: int
    gpus_per_node: int  # devices per node: GPUs, or training worker processes on CPU nodes
    gpu: str  # device model, e.g. "H100-SXM5-80GB"; "cpu" for CPU-only nodes
    hbm_gib: float
    peak_tflops: float
    intra_node_gbps: float
    inter_node_gbps: float
    name: str = ""
    hbm_gb_per_s: float = 0.0  # 0: unknown, the roofline then ignores memory-bound time
    intra_node_link: str = ""  # nvlink | pcie | shm | ...
    inter_node_link: str = ""  # infiniband | ethernet | ...
    intra_latency_us: float = 5.0  # alpha of the alpha-beta link model, per ring step
    inter_latency_us: float = 10.0
    matmul_efficiency: float = 0.0  # achievable fraction of peak on large GEMMs; 0: default
    labels: dict[str, str] = field(default_factory=dict)
    source: str = ""  # where the numbers come from
    calibration: Calibration = field(default_factory=Calibration)

    def validate(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"nodes: must be >= 1, got {self.nodes}")
        if self.gpus_per_node < 1:
            raise ValueError(f"gpus_per_node: must be >= 1, got {self.gpus_per_node}")
        if not self.gpu:
            raise ValueError("gpu: must name the device model (or 'cpu')")
        for key in ("hbm_gib", "peak_tflops"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)}")
        # A link that is never used may be unknown (0); one that is used may not.
        if self.gpus_per_node > 1 and not self.intra_node_gbps > 0:
            raise ValueError(f"intra_node_gbps: must be > 0 with {self.gpus_per_node} devices per node")
        if self.nodes > 1 and not self.inter_node_gbps > 0:
            raise ValueError(f"inter_node_gbps: must be > 0 with {self.nodes} nodes")
        for key in ("intra_node_gbps", "inter_node_gbps", "hbm_gb_per_s",
                    "intra_latency_us", "inter_latency_us"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.matmul_efficiency <= 1:
            raise ValueError(f"matmul_efficiency: must be in [0, 1], got {self.matmul_efficiency}")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    def for_world(self, world_size: int) -> Topology:
        """The same hardware cut to ``world_size`` devices: part of one node, or whole nodes."""
        if world_size < 1:
            raise ValueError(f"world_size: must be >= 1, got {world_size}")
        g = self.gpus_per_node
        if world_size <= g:
            return replace(self, nodes=1, gpus_per_node=world_size)
        if world_size % g:
            raise ValueError(
                f"world_size: {world_size} is not a whole number of {g}-device nodes"
            )
        return replace(self, nodes=world_size // g)

    def shared_node(self, workers: int) -> Topology:
        """One node of this hardware run by ``workers`` processes that share it (CPU nodes
        with fractional CPUs per worker): each gets 1/workers of the node's compute, memory
        and memory bandwidth; links and latencies are unchanged."""
        if workers < 1:
            raise ValueError(f"workers: must be >= 1, got {workers}")
        k = self.gpus_per_node / workers
        cal = self.calibration
        cal = replace(cal, gemm_tflops=cal.gemm_tflops * k, copy_gb_per_s=cal.copy_gb_per_s * k,
                      attn_tflops=cal.attn_tflops * k, elem_gb_per_s=cal.elem_gb_per_s * k,
                      loss_gb_per_s=cal.loss_gb_per_s * k)
        return replace(self, nodes=1, gpus_per_node=workers, hbm_gib=self.hbm_gib * k,
                       peak_tflops=self.peak_tflops * k, hbm_gb_per_s=self.hbm_gb_per_s * k,
                       calibration=cal)


def topology_from_dict(data: dict, file: str | Path | None = None) -> Topology:
    return from_dict(Topology, data, file=file)


def resolve_topology_path(path_or_name: str | Path) -> Path:
    """A file path, or the name of a bundled topology (``a100-8x8`` → topologies/a100-8x8.yaml)."""
    p = Path(path_or_name)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    bundled = TOPOLOGY_DIR / f"{path_or_name}.yaml"
    return bundled if bundled.exists() else p


def load_topology(path_or_name: str | Path) -> Topology:
    path = resolve_topology_path(path_or_name)
    topo = topology_from_dict(load_yaml(path), file=path)
    return topo if topo.name else replace(topo, name=path.stem)


def bundled_topologies() -> list[str]:
    return sorted(p.stem for p in TOPOLOGY_DIR.glob("*.yaml"))


def dump_topology(topo: Topology) -> str:
    return yaml.safe_dump(to_dict(topo), sort_keys=False)


def save_topology(topo: Topology, path: str | Path) -> None:
    Path(path).write_text(dump_topology(topo), encoding="utf-8")


# --- published device numbers -------------------------------------------------------------


@dataclass(frozen=True)
class GpuSpec:
    model: str
    peak_tflops: float  # dense bf16 (V100: fp16 tensor core)
    hbm_gib: float
    hbm_gb_per_s: float
    link_gbps: float  # intra-node GPU link per device per direction, Gbit/s
    link: str
    source: str


_A100 = "NVIDIA A100 Tensor Core GPU datasheet (2021)"
_H100 = "NVIDIA H100 Tensor Core GPU datasheet (2023)"
# Matched in order against the nvidia-smi name (case-insensitive, all words must occur),
# so the more specific variants come first. Peak values agree with torchtitan's
# get_peak_flops table (ANCHORS.md 1.1).
GPU_SPECS: list[tuple[tuple[str, ...], GpuSpec]] = [
    (("h100", "nvl"), GpuSpec("H100-NVL", 835, 94, 3900, 2400, "nvlink-bridge",
                              _H100 + ": 1671 TFLOP/s bf16 with sparsity, NVLink 600 GB/s")),
    (("h100", "pcie"), GpuSpec("H100-PCIe", 756, 80, 2000, 512, "pcie",
                               _H100 + ": PCIe Gen5 128 GB/s bidirectional")),
    (("h100",), GpuSpec("H100-SXM5-80GB", 989, 80, 3350, 3600, "nvlink",
                        _H100 + ": bf16 1979 TFLOP/s with sparsity, HBM3 3.35 TB/s, NVLink 900 GB/s")),
    (("h200",), GpuSpec("H200-SXM-141GB", 989, 141, 4800, 3600, "nvlink",
                        "NVIDIA H200 datasheet: HBM3e 141 GB at 4.8 TB/s, NVLink 900 GB/s")),
    (("gb200",), GpuSpec("GB200", 2500, 186, 8000, 7200, "nvlink",
                         "NVIDIA GB200 NVL72 datasheet (per GPU), NVLink5 1.8 TB/s")),
    (("b200",), GpuSpec("B200", 2250, 180, 8000, 7200, "nvlink",
                        "NVIDIA DGX B200 datasheet (per GPU), NVLink5 1.8 TB/s")),
    (("a100", "pcie"), GpuSpec("A100-PCIe-80GB", 312, 80, 1935, 256, "pcie",
                               _A100 + ": PCIe Gen4 64 GB/s bidirectional")),
    (("a100", "40gb"), GpuSpec("A100-SXM4-40GB", 312, 40, 1555, 2400, "nvlink",
                               _A100 + ": HBM2 1,555 GB/s, NVLink 600 GB/s")),
    (("a100",), GpuSpec("A100-SXM4-80GB", 312, 80, 2039, 2400, "nvlink",
                        _A100 + ": bf16 312 TFLOP/s dense, HBM2e 2,039 GB/s, NVLink 600 GB/s")),
    (("mi300x",), GpuSpec("MI300X", 1307, 192, 5300, 3584, "infinity-fabric",
                          "AMD Instinct MI300X datasheet: 1307 TFLOP/s bf16 dense, 896 GB/s IF")),
    (("l40s",), GpuSpec("L40S", 362, 48, 864, 256, "pcie",
                        "NVIDIA L40S datasheet: 362 TFLOP/s bf16 dense, PCIe Gen4")),
    (("v100",), GpuSpec("V100-SXM2-32GB", 125, 32, 900, 1200, "nvlink",
                        "NVIDIA V100 datasheet: 125 TFLOP/s fp16 tensor, NVLink 300 GB/s")),
]

# One NVLink (generations 3 and 4) carries 25 GB/s each way; `nvidia-smi topo -m` shows
# NV12 between A100s and NV18 between H100s behind NVSwitch, i.e. 300 and 450 GB/s.
NVLINK_GBPS_PER_LINK = 200.0
PCIE_GEN4_X16_GBPS = 256.0  # 32 GB/s each way
# gloo all-reduce between two CPU workers on one host: about 4 ms for 1M floats
# (RAY-NOTES.md), i.e. 4 MB of ring traffic per 4 ms ≈ 8 Gbit/s.
CPU_SHM_GBPS = 8.0
DEFAULT_ETHERNET_GBPS = 10.0  # when no NIC reports a speed (virtual NICs report -1)


def lookup_gpu(name: str) -> GpuSpec | None:
    low = name.lower()
    for words, spec in GPU_SPECS:
        if all(w in low for w in words):
            return spec
    return None
