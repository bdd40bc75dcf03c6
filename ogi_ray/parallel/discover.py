"""Topology discovery: one Ray task per node of a tier reports what the node has.

    driver  ray.nodes() ─► alive nodes (with label tier_key=tier, if a tier is named)
            ─► one task per node, pinned by label_selector {"ray.io/node-id": id, tier_key: tier}
    task    local_report(): CPUs, memory, node labels; GPUs and their memory
            (nvidia-smi --query-gpu), GPU-to-GPU links (nvidia-smi topo -m), InfiniBand
            ports (/sys/class/infiniband/*/ports/*/rate), NIC speeds (/sys/class/net/*/speed);
            probes: fp32 matmul FLOP/s and copy bandwidth (CPU nodes), bf16 matmul on a GPU
            missing from the spec table
    driver  [NodeReport] ─► to_topology() ─► Topology (a tier is planned as homogeneous: the
            weakest node's numbers are used) ─► planner, or YAML for later

``probe_allreduce`` optionally measures ring all-reduce bandwidth between actors (torch gloo)
to replace the table value of a link. The parsers are plain functions so they can be
tested against recorded tool output. Ray and torch are imported inside functions.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ogi_ray.parallel.topology import (
    CPU_SHM_GBPS,
    DEFAULT_ETHERNET_GBPS,
    NVLINK_GBPS_PER_LINK,
    PCIE_GEN4_X16_GBPS,
    Topology,
    lookup_gpu,
)

TIER_KEY = "ogi.io/tier"
NODE_ID_KEY = "ray.io/node-id"


class DiscoveryError(RuntimeError):
    pass


@dataclass
class GpuInfo:
    name: str
    memory_mib: int


@dataclass
class IbPort:
    device: str
    port: str
    rate_gbps: float
    state: str = ""
    link_layer: str = ""

    @property
    def active(self) -> bool:
        return "ACTIVE" in self.state.upper() or not self.state


@dataclass
class NodeReport:
    node_id: str = ""
    hostname: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    cpus: int = 0  # CPUs this process may run on (sched_getaffinity)
    ray_cpus: float = 0.0  # the node's CPU resource in Ray (may differ: ray start --num-cpus)
    ray_gpus: float = 0.0
    memory_gib: float = 0.0
    gpus: list[GpuInfo] = field(default_factory=list)
    gpu_link: str = "none"  # nvlink | pcie | none (fewer than 2 GPUs)
    nvlinks: int = 0  # bonded NVLinks between the worst-connected GPU pair
    ib_ports: list[IbPort] = field(default_factory=list)
    nic_gbps: dict[str, float] = field(default_factory=dict)
    matmul_tflops: float = 0.0  # probe: whole node (CPU: all BLAS threads), 0 if not run
    copy_gb_per_s: float = 0.0  # probe: one-thread memory copy bandwidth
    notes: list[str] = field(default_factory=list)


# --- parsers (pure) -------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_gpu_query(text: str) -> list[GpuInfo]:
    """``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader`` → GPUs."""
    gpus = []
    for line in text.strip().splitlines():
        name, _, mem = line.rpartition(",")
        m = re.search(r"(\d+)\s*MiB", mem)
        if name.strip() and m:
            gpus.append(GpuInfo(name.strip(), int(m.group(1))))
    return gpus


def parse_topo_matrix(text: str) -> tuple[str, int]:
    """``nvidia-smi topo -m`` → (link kind between GPUs, NVLinks of the weakest pair).

    "nvlink" when every GPU pair is connected by NV#, "pcie" when any pair goes through
    PCIe (PIX, PXB, PHB, NODE, SYS): a ring is as fast as its slowest hop.
    """
    # GPU rows start at column 0 ("GPU3\t..."); the header row starts with a tab. GPU columns
    # come first, so row i's first n cells after its name are its links to GPU0..GPUn-1.
    rows = [ln.split() for ln in (_ANSI.sub("", x) for x in text.splitlines())
            if re.match(r"GPU\d+\s", ln)]
    n = len(rows)
    if n < 2:
        return "none", 0
    kinds, links = set(), []
    for toks in rows:
        for tok in toks[1:1 + n]:
            if tok == "X":
                continue
            m = re.fullmatch(r"NV(\d+)", tok)
            if m:
                kinds.add("nvlink")
                links.append(int(m.group(1)))
            else:
                kinds.add("pcie")
    if not kinds:
        return "none", 0
    if kinds == {"nvlink"}:
        return "nvlink", min(links)
    return "pcie", 0


def parse_ib_rate(text: str) -> float:
    """``/sys/class/infiniband/<dev>/ports/<n>/rate`` ("400 Gb/sec (4X NDR)") → Gbit/s."""
    m = re.search(r"([\d.]+)\s*Gb/sec", text)
    return float(m.group(1)) if m else 0.0


def read_infiniband(root: str | Path = "/sys/class/infiniband") -> list[IbPort]:
    ports = []
    for rate_file in sorted(Path(root).glob("*/ports/*/rate")):
        port_dir = rate_file.parent

        def read(name: str, d: Path = port_dir) -> str:
            try:
                return (d / name).read_text().strip()
            except OSError:
                return ""

        ports.append(IbPort(port_dir.parent.parent.name, port_dir.name,
                            parse_ib_rate(read("rate")), read("state"), read("link_layer")))
    return ports


def read_nic_speeds(root: str | Path = "/sys/class/net") -> dict[str, float]:
    """Physical NICs with a known speed, in Gbit/s (``speed`` is in Mbit/s; virtual NICs
    and down links report -1 or fail to read)."""
    out = {}
    for dev in sorted(Path(root).glob("*")):
        if dev.name == "lo" or "/virtual/" in str(dev.resolve()):
            continue
        try:
            mbps = int((dev / "speed").read_text().strip())
        except (OSError, ValueError):
            continue
        if mbps > 0:
            out[dev.name] = mbps / 1000
    return out


# --- probes ---------------------------------------------------------------------------------


def probe_matmul_tflops(n: int = 1024, seconds: float = 0.3) -> float:
    """Best fp32 matmul rate of this process (numpy's BLAS, all its threads), TFLOP/s."""
    import numpy as np

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    best, end = 0.0, time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        a @ a
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
        if time.perf_counter() > end:
            return best / 1e12


def probe_copy_gb_per_s(mib: int = 128, repeats: int = 3) -> float:
    """One-thread memory copy bandwidth (read + write), GB/s."""
    import numpy as np

    x = np.ones(mib * 2**18, dtype=np.float32)
    y = np.empty_like(x)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(y, x)
        best = max(best, 2 * x.nbytes / (time.perf_counter() - t))
    return best / 1e9


def probe_gpu_matmul_tflops(n: int = 8192, iters: int = 10) -> float:
    """bf16 matmul rate on GPU 0 (for GPUs not in the spec table), TFLOP/s; 0 without CUDA."""
    try:
        import torch
    except ImportError:
        return 0.0
    if not torch.cuda.is_available():
        return 0.0
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):
        a @ a
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        a @ a
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t) / 1e12


# --- one node -------------------------------------------------------------------------------


def _run(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def local_report(probe: bool = True) -> NodeReport:
    """What this machine has (runs anywhere; inside a Ray task it also reads node labels)."""
    rep = NodeReport(hostname=socket.gethostname(), cpus=len(os.sched_getaffinity(0)),
                     memory_gib=round(_memory_gib(), 2))
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            rep.node_id, rep.labels = ctx.get_node_id(), dict(ctx.get_node_labels())
    except ImportError:
        pass
    query = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"])
    if query:
        rep.gpus = parse_gpu_query(query)
        topo = _run(["nvidia-smi", "topo", "-m"])
        if topo:
            rep.gpu_link, rep.nvlinks = parse_topo_matrix(topo)
    rep.ib_ports = read_infiniband()
    rep.nic_gbps = read_nic_speeds()
    if probe:
        if not rep.gpus:
            rep.matmul_tflops = probe_matmul_tflops()
            rep.copy_gb_per_s = probe_copy_gb_per_s()
        elif lookup_gpu(rep.gpus[0].name) is None:
            rep.matmul_tflops = probe_gpu_matmul_tflops()
            rep.notes.append(f"{rep.gpus[0].name} not in GPU_SPECS: peak from a bf16 matmul probe")
    return rep


def _report_task(probe: bool) -> NodeReport:
    return local_report(probe)


# --- the cluster ----------------------------------------------------------------------------


def discover(
    tier: str | None = None, *, tier_key: str = TIER_KEY, probe: bool = True,
    timeout_s: float = 120.0,
) -> list[NodeReport]:
    """One report per alive node (of the tier), from a Ray task run on that node."""
    import ray

    if not ray.is_initialized():
        raise DiscoveryError("Ray is not initialised (ray.init first)")
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if tier is not None:
        nodes = [n for n in nodes if n.get("Labels", {}).get(tier_key) == tier]
    if not nodes:
        raise DiscoveryError(f"no alive node has label {tier_key}={tier}" if tier else "no alive node")
    # num_cpus=0: discovery must run on a busy cluster too; the selector pins the node.
    task = ray.remote(num_cpus=0, max_retries=0)(_report_task)
    refs = []
    for n in nodes:
        selector = {NODE_ID_KEY: n["NodeID"]}
        if tier is not None:
            selector[tier_key] = tier
        refs.append(task.options(label_selector=selector).remote(probe))
    done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if pending:
        for r in pending:
            ray.cancel(r, force=True)
        raise DiscoveryError(f"{len(pending)} of {len(refs)} nodes did not report in {timeout_s:g} s")
    reports = ray.get(refs)
    for n, rep in zip(nodes, reports, strict=True):
        res = n.get("Resources", {})
        rep.node_id = rep.node_id or n["NodeID"]
        rep.ray_cpus, rep.ray_gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        rep.labels = rep.labels or dict(n.get("Labels", {}))
    return reports


def _inter_node_gbps(rep: NodeReport) -> tuple[float, str]:
    """Node injection bandwidth (Gbit/s) and the link kind: active IB/RoCE ports, else NICs."""
    ib = [p for p in rep.ib_ports if p.active and p.rate_gbps > 0]
    if ib:
        kind = "roce" if all(p.link_layer.lower() == "ethernet" for p in ib) else "infiniband"
        return sum(p.rate_gbps for p in ib), kind
    if rep.nic_gbps:
        return max(rep.nic_gbps.values()), "ethernet"
    return 0.0, ""


def to_topology(reports: list[NodeReport], name: str = "discovered") -> Topology:
    """A homogeneous Topology from node reports: the weakest node's numbers (a synchronous
    step runs at the pace of its slowest member)."""
    if not reports:
        raise DiscoveryError("no node reports")
    notes: list[str] = []
    if all(r.gpus for r in reports):
        g = min(len(r.gpus) for r in reports)
        gpu_name = Counter(r.gpus[0].name for r in reports).most_common(1)[0][0]
        spec = lookup_gpu(gpu_name)
        probed = min(r.matmul_tflops for r in reports)
        if spec is None and probed <= 0:
            raise DiscoveryError(f"GPU {gpu_name!r} is not in GPU_SPECS and was not probed")
        peak = spec.peak_tflops if spec else probed
        hbm = min(gi.memory_mib for r in reports for gi in r.gpus) / 1024
        kinds = {r.gpu_link for r in reports}
        if kinds == {"nvlink"}:
            nv = min(r.nvlinks for r in reports)
            intra, link = nv * NVLINK_GBPS_PER_LINK, "nvlink"
        elif spec and g == 1:
            intra, link = spec.link_gbps, spec.link
        else:
            intra, link = PCIE_GEN4_X16_GBPS, "pcie"
        device, hbm_bw = (spec.model if spec else gpu_name), (spec.hbm_gb_per_s if spec else 0.0)
        notes.append(f"peak, HBM bandwidth: {spec.source}" if spec else f"peak: bf16 matmul probe on {gpu_name}")
        eff = 0.0 if spec else 1.0  # a probed peak is already what matmuls achieve
        lat = (5.0, 10.0)  # NCCL over NVLink / InfiniBand
    else:
        if any(r.gpus for r in reports):
            notes.append("mixed GPU and CPU nodes: planned as CPU nodes")
        # One training worker per CPU; the node's memory and probed FLOP/s shared among them.
        g = min(r.cpus for r in reports)
        if min(r.matmul_tflops for r in reports) <= 0:
            raise DiscoveryError("CPU nodes need the matmul probe for their peak (probe=True)")
        peak = min(r.matmul_tflops / r.cpus for r in reports)
        hbm = min(r.memory_gib for r in reports) / g
        hbm_bw = min(r.copy_gb_per_s for r in reports)
        device, intra, link, eff = "cpu", CPU_SHM_GBPS, "shm", 1.0
        lat = (50.0, 100.0)  # gloo over loopback / TCP: tens of microseconds per step
        notes.append("CPU: fp32 matmul and copy probes; gloo shared-memory bandwidth from RAY-NOTES.md")
    node_bw = [_inter_node_gbps(r) for r in reports]
    inter = min(bw for bw, _ in node_bw) / g
    inter_kind = node_bw[0][1]
    if inter <= 0:
        inter, inter_kind = DEFAULT_ETHERNET_GBPS / g, "ethernet"
        notes.append(f"no NIC reported a speed: assumed {DEFAULT_ETHERNET_GBPS:g} Gbit/s per node")
    common = set(reports[0].labels.items())
    for r in reports[1:]:
        common &= set(r.labels.items())
    labels = {k: v for k, v in sorted(common) if k != NODE_ID_KEY}
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    return Topology(
        name=name, nodes=len(reports), gpus_per_node=g, gpu=device, hbm_gib=round(hbm, 2),
        peak_tflops=round(peak, 4), hbm_gb_per_s=round(hbm_bw, 1),
        intra_node_gbps=round(intra, 1), inter_node_gbps=round(inter, 2), intra_node_link=link,
        inter_node_link=inter_kind, intra_latency_us=lat[0], inter_latency_us=lat[1],
        matmul_efficiency=eff, labels=labels,
        source=f"discovered {when} on {len(reports)} node(s); " + "; ".join(notes),
    )


# --- optional all-reduce probe --------------------------------------------------------------


class _Peer:
    def address(self) -> tuple[str, int]:
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def allreduce(self, rank: int, world: int, addr: str, port: int, nbytes: int, iters: int) -> float:
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=rank,
                                world_size=world)
        try:
            x = torch.ones(nbytes // 4)
            dist.all_reduce(x)  # warm-up: connections
            t = time.perf_counter()
            for _ in range(iters):
                dist.all_reduce(x)
            return (time.perf_counter() - t) / iters
        finally:
            dist.destroy_process_group()


def probe_allreduce(
    node_ids: list[str], *, per_node: int = 1, mib: int = 8, iters: int = 5,
    timeout_s: float = 120.0,
) -> float:
    """Ring all-reduce bus bandwidth (Gbit/s) among ``per_node`` actors on each node (gloo):
    2(n−1)/n · bytes / time, the figure nccl-tests calls busbw."""
    import ray

    cls = ray.remote(num_cpus=0)(_Peer)
    actors = [cls.options(label_selector={NODE_ID_KEY: nid}).remote()
              for nid in node_ids for _ in range(per_node)]
    n = len(actors)
    if n < 2:
        raise DiscoveryError("the all-reduce probe needs at least two actors")
    try:
        addr, port = ray.get(actors[0].address.remote(), timeout=timeout_s)
        nbytes = mib * 2**20
        times = ray.get([a.allreduce.remote(i, n, addr, port, nbytes, iters)
                         for i, a in enumerate(actors)], timeout=timeout_s)
    finally:
        for a in actors:
            ray.kill(a)
    return 2 * (n - 1) / n * nbytes / max(times) * 8 / 1e9


def with_probed_links(topo: Topology, reports: list[NodeReport], **kw: Any) -> Topology:
    """Replace the link of the widest group the probe can measure by its measurement:
    inter-node with several nodes, else intra-node (two workers on the one node)."""
    ids = [r.node_id for r in reports]
    if len(ids) > 1:
        return replace(topo, inter_node_gbps=round(probe_allreduce(ids, **kw), 2))
    return replace(topo, intra_node_gbps=round(probe_allreduce(ids, per_node=2, **kw), 2))
