"""NCCL safety on a CPU machine: every host-side collective the trainer issues runs on
the process group the driver asks Ray Train for on GPUs.

A NCCL-only process group has no CPU backend, so an all-reduce of a CPU tensor fails
("No backend type associated with device type cpu"): that is what the old driver's
``backend="nccl"`` did to the per-step metric reduction. Here gloo plays NCCL's part for
the ``cuda`` device type: ``"cuda:gloo"`` reproduces the failure, and the backend string
``parallel.device.process_group_backend`` gives for GPUs (``"cpu:gloo,cuda:nccl"``, with
gloo swapped in for nccl) carries every one of those collectives.
"""

from __future__ import annotations

import pytest
import torch
from _dist import run_distributed
from torch import nn

from ogi_ray.parallel.device import attention_kernel, process_group_backend


def _host_collectives(rank, world):
    """The trainer's control-plane collectives, each on small host data."""
    from ogi_ray.lineage.sharded import sharded_weights_leaves
    from ogi_ray.train.checkpoint import broadcast_object, gather_to_rank0
    from ogi_ray.train.metrics_log import reduce_metrics
    from ogi_ray.train.trainer import broadcast_floats

    out = {}
    metrics = {"loss/lm": 1.0 + rank, "gradnorm_raw/lm": 2.0}
    out["reduce"] = reduce_metrics(metrics, ["lm"], [10.0 * (rank + 1), float(rank)])
    out["floats"] = broadcast_floats([float(rank), 7.0])
    out["object"] = broadcast_object({"from": rank})
    out["gather"] = gather_to_rank0(f"r{rank}")
    parts = [None] * world  # train/heldout.py's merge of the dp ranks' held-out scores
    torch.distributed.all_gather_object(parts, {f"perplexity/src{rank}": 1.0 + rank})
    out["all_gather"] = parts
    torch.manual_seed(0)
    out["leaves"] = len(sharded_weights_leaves(nn.Linear(4, 3).state_dict()))
    return out


def test_gpu_backend_string_gives_the_cpu_a_backend():
    assert process_group_backend(False) == "gloo"
    assert process_group_backend(True) == "cpu:gloo,cuda:nccl"
    # and the attention kernel: block-sparse FlexAttention only where it has a backward
    assert attention_kernel(torch.device("cuda")) == "flex"
    assert attention_kernel(torch.device("cpu")) == "sdpa"


def test_an_accelerator_only_group_cannot_carry_the_metric_reduction():
    """What every multi-GPU run through Ray Train hit at its first step before."""
    with pytest.raises(pytest.fail.Exception, match="No backend type associated with device type cpu"):
        run_distributed(_host_collectives, 2, backend="cuda:gloo", timeout=120.0)


def test_the_gpu_process_group_carries_every_host_collective():
    backend = process_group_backend(True, accelerator="gloo")  # "cpu:gloo,cuda:gloo"
    results = run_distributed(_host_collectives, 2, backend=backend, timeout=120.0)
    # Mean loss over ranks, summed tokens; rank 0's values everywhere.
    assert [r["reduce"] for r in results] == [({"loss/lm": 1.5, "gradnorm_raw/lm": 2.0}, [30.0, 1.0])] * 2
    assert [r["floats"] for r in results] == [[0.0, 7.0]] * 2
    assert [r["object"] for r in results] == [{"from": 0}] * 2
    assert results[0]["gather"] == ["r0", "r1"] and results[1]["gather"] == []
    assert [r["all_gather"] for r in results] == [[{"perplexity/src0": 1.0}, {"perplexity/src1": 2.0}]] * 2
    assert {r["leaves"] for r in results} == {2}
