"""Topology YAML (validation, bundled examples against datasheets), the discovery parsers on
recorded tool output, and discovery as a real Ray task on the local cluster."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ogi_ray.config import ConfigError
from ogi_ray.parallel import cli as pcli
from ogi_ray.parallel.discover import (
    GpuInfo,
    IbPort,
    NodeReport,
    parse_gpu_query,
    parse_ib_rate,
    parse_topo_matrix,
    read_infiniband,
    read_nic_speeds,
    to_topology,
)
from ogi_ray.parallel.topology import (
    Topology,
    bundled_topologies,
    dump_topology,
    load_topology,
    lookup_gpu,
)

GBIT_PER_GBYTE = 8

GOOD = {
    "nodes": 2, "gpus_per_node": 8, "gpu": "A100-SXM4-80GB", "hbm_gib": 80,
    "peak_tflops": 312, "intra_node_gbps": 2400, "inter_node_gbps": 200,
}


def _write(tmp_path: Path, text: str, name: str = "topo.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _yaml(d: dict) -> str:
    return "".join(f"{k}: {v}\n" for k, v in d.items())


# --- YAML ------------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    topo = load_topology(_write(tmp_path, _yaml(GOOD)))
    assert topo.world_size == 16 and topo.name == "topo"
    again = load_topology(_write(tmp_path, dump_topology(topo), "again.yaml"))
    assert again == topo


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"peak_tflops": None}, "peak_tflops", "required"),
        ({"gpus_per_node": 0}, "gpus_per_node", ">= 1"),
        ({"hbm_gib": "lots"}, "hbm_gib", "number"),
        ({"gpu_count": 8}, "gpu_count", "unknown key"),
        ({"inter_node_gbps": 0}, "inter_node_gbps", "2 nodes"),
        ({"matmul_efficiency": 1.5}, "matmul_efficiency", "[0, 1]"),
        ({"labels": "tier=a"}, "labels", "mapping"),
    ],
)
def test_bad_yaml_names_file_and_key(tmp_path, change, field, words):
    data = {**GOOD, **change}
    data = {k: v for k, v in data.items() if v is not None}
    path = _write(tmp_path, _yaml(data))
    with pytest.raises(ConfigError) as e:
        load_topology(path)
    assert e.value.file == str(path)
    assert e.value.field == field
    assert words in str(e.value)


def test_malformed_yaml_names_file(tmp_path):
    path = _write(tmp_path, "nodes: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML") as e:
        load_topology(path)
    assert str(path) in str(e.value)


def test_one_node_needs_no_inter_node_link(tmp_path):
    topo = load_topology(_write(tmp_path, _yaml({**GOOD, "nodes": 1, "inter_node_gbps": 0})))
    assert topo.nodes == 1


def test_cli_reports_bad_topology(tmp_path, capsys):
    path = _write(tmp_path, _yaml({**GOOD, "gpus_per_node": -8}))
    args = _parse(["plan", "--topology", str(path), "--model", "gpt3-175b"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "gpus_per_node" in err


def _parse(argv: list[str]):
    import argparse

    p = argparse.ArgumentParser()
    pcli.register(p.add_subparsers(dest="command", required=True))
    return p.parse_args(["parallel", *argv])


# --- bundled examples against published numbers ----------------------------------------------


def test_bundled_examples_load():
    names = bundled_topologies()
    assert {"a100-8x8", "cpu-2", "h100-nvlink-ib-64x8", "h100-10k-1250x8"} <= set(names)
    for n in names:
        assert load_topology(n).source, f"{n}: state where the numbers come from"
    assert load_topology("h100-10k-1250x8").world_size == 10_000


def test_h100_and_a100_numbers_match_datasheets():
    h = load_topology("h100-nvlink-ib-64x8")
    # H100 SXM5: 989 TFLOP/s bf16 dense, 80 GB HBM3 at 3.35 TB/s, NVLink 900 GB/s
    # bidirectional (450 GB/s each way); one 400 Gb/s NDR NIC per GPU.
    assert (h.peak_tflops, h.hbm_gib, h.hbm_gb_per_s) == (989, 80, 3350)
    assert h.intra_node_gbps == 900 / 2 * GBIT_PER_GBYTE
    assert h.inter_node_gbps == 400
    a = load_topology("a100-8x8")
    # A100 SXM4 80GB: 312 TFLOP/s, 2,039 GB/s, NVLink 600 GB/s; DGX A100: HDR 200 Gb/s per GPU.
    assert (a.peak_tflops, a.hbm_gib, a.hbm_gb_per_s) == (312, 80, 2039)
    assert a.intra_node_gbps == 600 / 2 * GBIT_PER_GBYTE
    assert a.inter_node_gbps == 200


def test_gpu_table_lookup():
    assert lookup_gpu("NVIDIA H100 80GB HBM3").peak_tflops == 989  # SXM
    assert lookup_gpu("NVIDIA H100 PCIe").peak_tflops == 756
    assert lookup_gpu("NVIDIA A100-SXM4-40GB").hbm_gib == 40
    assert lookup_gpu("NVIDIA GB200").peak_tflops == 2500
    assert lookup_gpu("Some Future GPU") is None


def test_for_world():
    h = load_topology("h100-nvlink-ib-64x8")
    assert (h.for_world(4).nodes, h.for_world(4).gpus_per_node) == (1, 4)
    assert h.for_world(64).nodes == 8
    with pytest.raises(ValueError, match="whole number"):
        h.for_world(12)


# --- parsers on recorded output -------------------------------------------------------------

# Recorded on an H100 80GB HBM3 machine (nvidia-smi 580.159.04), ANSI underline included.
H100_QUERY = "NVIDIA H100 80GB HBM3, 81559 MiB\n"
H100_TOPO_1GPU = (
    "\t\x1b[4mGPU0\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    "GPU0\t X \t0-15\t0\t\tN/A\n\nLegend:\n\n  X    = Self\n"
    "  NV#  = Connection traversing a bonded set of # NVLinks\n"
)


def _matrix(cells: list[list[str]], nics: int = 2) -> str:
    """A `nvidia-smi topo -m` table in the layout of a DGX A100 (GPUs, then NICs)."""
    n = len(cells)
    head = "\t" + "\t".join([f"GPU{i}" for i in range(n)] + [f"NIC{j}" for j in range(nics)]
                            + ["CPU Affinity", "NUMA Affinity"])
    rows = [f"GPU{i}\t" + "\t".join(cells[i] + ["PXB"] * nics + ["48-63,176-191", "3"])
            for i in range(n)]
    rows += [f"NIC{j}\t" + "\t".join(["PXB"] * n + ["X" if k == j else "SYS" for k in range(nics)])
             for j in range(nics)]
    return "\n".join([head, *rows, "", "Legend:", "  X    = Self"]) + "\n"


def test_parse_gpu_query():
    assert parse_gpu_query(H100_QUERY) == [GpuInfo("NVIDIA H100 80GB HBM3", 81559)]
    two = "NVIDIA A100-SXM4-80GB, 81920 MiB\nNVIDIA A100-SXM4-80GB, 81920 MiB\n"
    assert len(parse_gpu_query(two)) == 2


def test_parse_topo_matrix():
    assert parse_topo_matrix(H100_TOPO_1GPU) == ("none", 0)
    dgx = [["X" if i == j else "NV12" for j in range(8)] for i in range(8)]
    assert parse_topo_matrix(_matrix(dgx)) == ("nvlink", 12)
    # NVLink-bridged pairs in a PCIe server: an 8-way ring still crosses PCIe.
    bridged = [["X" if i == j else ("NV4" if i // 2 == j // 2 else "SYS") for j in range(8)]
               for i in range(8)]
    assert parse_topo_matrix(_matrix(bridged)) == ("pcie", 0)


def test_parse_ib_rate_and_sysfs(tmp_path):
    assert parse_ib_rate("400 Gb/sec (4X NDR)") == 400
    assert parse_ib_rate("200 Gb/sec (4X HDR)") == 200
    for dev, rate, state in (("mlx5_0", "400 Gb/sec (4X NDR)", "4: ACTIVE"),
                             ("mlx5_1", "400 Gb/sec (4X NDR)", "1: DOWN")):
        port = tmp_path / "ib" / dev / "ports" / "1"
        port.mkdir(parents=True)
        (port / "rate").write_text(rate + "\n")
        (port / "state").write_text(state + "\n")
        (port / "link_layer").write_text("InfiniBand\n")
    ports = read_infiniband(tmp_path / "ib")
    assert [(p.device, p.rate_gbps, p.active) for p in ports] == [
        ("mlx5_0", 400.0, True), ("mlx5_1", 400.0, False)]


def test_read_nic_speeds(tmp_path):
    for name, speed in (("eth0", "25000"), ("eth1", "-1"), ("lo", "10")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "speed").write_text(speed + "\n")
    assert read_nic_speeds(tmp_path) == {"eth0": 25.0}


def _dgx_a100(node: str) -> NodeReport:
    return NodeReport(
        node_id=node, cpus=256, memory_gib=2000,
        gpus=[GpuInfo("NVIDIA A100-SXM4-80GB", 81920)] * 8, gpu_link="nvlink", nvlinks=12,
        ib_ports=[IbPort(f"mlx5_{i}", "1", 200.0, "4: ACTIVE", "InfiniBand") for i in range(8)],
        labels={"ogi.io/tier": "a100", "ray.io/node-id": node},
    )


def test_to_topology_from_gpu_reports():
    topo = to_topology([_dgx_a100("n1"), _dgx_a100("n2")], name="dgx")
    # 12 NVLink3 links × 25 GB/s each way; 8 HDR ports of 200 Gb/s shared by 8 GPUs.
    assert (topo.nodes, topo.gpus_per_node, topo.gpu) == (2, 8, "A100-SXM4-80GB")
    assert topo.intra_node_gbps == 12 * 25 * GBIT_PER_GBYTE
    assert topo.inter_node_gbps == 8 * 200 / 8
    assert topo.peak_tflops == 312 and topo.hbm_gib == 80
    assert topo.labels == {"ogi.io/tier": "a100"}
    assert topo.inter_node_link == "infiniband"


def test_to_topology_from_cpu_reports():
    rep = NodeReport(node_id="c", cpus=4, memory_gib=32, matmul_tflops=0.4, copy_gb_per_s=12,
                     nic_gbps={"eth0": 25.0})
    topo = to_topology([rep, rep])
    assert (topo.gpus_per_node, topo.gpu) == (4, "cpu")
    assert topo.peak_tflops == pytest.approx(0.1) and topo.hbm_gib == 8
    assert topo.inter_node_gbps == pytest.approx(25 / 4)
    assert isinstance(topo, Topology)


# --- discovery: a real Ray task on the local cluster -----------------------------------------


def test_discover_this_node(ray_local):
    from ogi_ray.parallel.discover import DiscoveryError, discover

    node = ray_local.get_runtime_context().get_node_id()
    (rep,) = discover(probe=False)
    assert rep.node_id == node
    assert rep.cpus == len(os.sched_getaffinity(0))  # measured inside the task
    assert rep.ray_cpus == 4  # the fixture's num_cpus
    assert rep.labels.get("ray.io/node-id") == node
    assert rep.memory_gib > 0 and rep.hostname
    # A tier is a label selector: select this node by a label it has, and none by one it lacks.
    (same,) = discover(tier=node, tier_key="ray.io/node-id", probe=False)
    assert same.node_id == node
    with pytest.raises(DiscoveryError, match="no alive node"):
        discover(tier="h100", probe=False)


@pytest.mark.skipif(sys.platform != "linux", reason="probes read Linux sysfs")
def test_local_probes_measure_something():
    from ogi_ray.parallel.discover import probe_copy_gb_per_s, probe_matmul_tflops

    # Any CPU of the last decade does 1 GFLOP/s and copies 0.5 GB/s; no CPU does 100 TFLOP/s.
    assert 1e-3 < probe_matmul_tflops(n=256, seconds=0.05) < 100
    assert 0.5 < probe_copy_gb_per_s(mib=16, repeats=2) < 1000


def test_calibration_section_loads_and_names_bad_keys(tmp_path):
    text = _yaml(GOOD) + "calibration:\n  gemm_tflops: 250.5\n  overlap: 0.6\n  source: probe\n"
    topo = load_topology(_write(tmp_path, text))
    assert topo.calibration.gemm_tflops == 250.5 and topo.calibration.overlap == 0.6
    assert load_topology(_write(tmp_path, dump_topology(topo), "again.yaml")) == topo
    bad = _write(tmp_path, _yaml(GOOD) + "calibration:\n  compute_scale: 0\n", "bad.yaml")
    with pytest.raises(ConfigError) as e:
        load_topology(bad)
    assert e.value.field == "calibration.compute_scale" and "> 0" in e.value.message


def test_shared_node_splits_one_node_among_workers():
    cpu = load_topology("cpu-2")  # 2 workers of 0.089 TFLOP/s, 10 GiB, 15 GB/s each
    eight = cpu.shared_node(8)
    assert (eight.nodes, eight.gpus_per_node) == (1, 8)
    assert eight.peak_tflops == pytest.approx(0.089 * 2 / 8)
    assert eight.hbm_gib == pytest.approx(10 * 2 / 8) and eight.hbm_gb_per_s == pytest.approx(15 * 2 / 8)
    assert eight.intra_node_gbps == cpu.intra_node_gbps
