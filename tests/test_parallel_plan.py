"""The ParallelPlan contract: validation naming the field, JSON round trip, the job-config
section, resolve_plan honouring fixed fields, and a planner that only offers plans the
runtime builds. Pure Python and numpy: no torch, no Ray."""

from __future__ import annotations

import json

import pytest

from ogi_ray.config import ConfigError, from_dict
from ogi_ray.parallel.plan import ParallelConfig, ParallelPlan, default_plan, resolve_plan
from ogi_ray.parallel.planner import enumerate_layouts, plan, plan_at
from ogi_ray.parallel.shapes import ModelSpec
from ogi_ray.parallel.topology import load_topology

# A 4-layer, 8-head shape (16M parameters): small enough to plan instantly, with enough
# divisors that every dimension of the plan space has choices.
SPEC = ModelSpec(name="t", params=16e6, layers=4, hidden=512, heads=8, seq_len=256,
                 global_batch=16, vocab=8192, ffn_hidden=1536, gated_mlp=True)
FULL = dict(dp=2, tp=2, pp=2, microbatches=4, micro_batch_rows=2, activation_checkpoint="selective",
            sequence_parallel=True, reshard_after_forward=False)


def test_round_trip_through_json():
    p = ParallelPlan(**FULL)
    again = ParallelPlan.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p
    assert p.world_size == 8 and p.global_batch == 2 * 4 * 2


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"dp": 0}, "dp", "positive integer"),
    ({"tp": "2"}, "tp", "integer"),
    ({"activation_checkpoint": "some"}, "activation_checkpoint", "none"),
    ({"sequence_parallel": "yes"}, "sequence_parallel", "boolean"),
    ({"tp": 1}, "sequence_parallel", "tp > 1"),
    ({"microbatches": 1}, "microbatches", "at least pp"),
    ({"reshard_after_forward": True}, "reshard_after_forward", "pp > 1"),
    ({"zero": 1}, "zero", "unknown key"),
])
def test_bad_plans_name_file_and_field(change, field, words):
    with pytest.raises(ConfigError) as e:
        ParallelPlan.from_dict({**FULL, **change}, file="train_state.json", prefix="parallel")
    assert e.value.file == "train_state.json"
    assert e.value.field == f"parallel.{field}"
    assert words in e.value.message


def test_plan_is_frozen_and_validated_on_construction():
    p = ParallelPlan(dp=2)
    with pytest.raises(AttributeError):
        p.dp = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="^pp: "):
        ParallelPlan(pp=0)


def test_describe_names_every_choice():
    line = ParallelPlan(**FULL).describe()
    for words in ("dp=2", "tp=2", "pp=2", "4 1F1B micro-batches", "2 rows", "global batch 16",
                  "AC selective", "SP on", "ZeRO-2"):
        assert words in line, words
    assert "\n" not in line
    assert "ZeRO-3" in ParallelPlan(dp=2).describe()


def test_job_config_section():
    cfg = from_dict(ParallelConfig, {"tp": 2, "activation_checkpoint": "full", "topology": "cpu-2"},
                    file="job.yaml", prefix="parallel")
    assert cfg.fixed() == {"tp": 2, "activation_checkpoint": "full"}
    with pytest.raises(ConfigError) as e:
        from_dict(ParallelConfig, {"pp": 0}, file="job.yaml", prefix="parallel")
    assert e.value.field == "parallel.pp" and "null" in e.value.message
    with pytest.raises(ConfigError) as e:
        from_dict(ParallelConfig, {"reshard_after_forward": "no"}, file="job.yaml", prefix="parallel")
    assert e.value.field == "parallel.reshard_after_forward"


# --- resolve_plan ----------------------------------------------------------------------


def _eight_cpus():
    return load_topology("cpu-2").shared_node(8)


@pytest.mark.parametrize("fixed", [
    {"tp": 2}, {"pp": 2}, {"dp": 2, "tp": 4}, {"microbatches": 4}, {"micro_batch_rows": 1},
    {"activation_checkpoint": "full"}, {"activation_checkpoint": "selective"},
    {"sequence_parallel": True}, {"reshard_after_forward": False}, {"pp": 2, "microbatches": 8},
])
def test_resolve_plan_honours_fixed_fields(fixed):
    p = resolve_plan(ParallelConfig(**fixed), SPEC, 8, _eight_cpus(), 16)
    assert {k: getattr(p, k) for k in fixed} == fixed
    assert p.world_size == 8 and p.global_batch == 16


@pytest.mark.parametrize(("fixed", "field"), [
    ({"tp": 3}, "parallel.tp"),  # does not divide 8 heads
    ({"dp": 3}, "parallel.dp"),  # does not divide the batch of 16
    ({"pp": 5}, "parallel.pp"),  # more stages than layers
    ({"reshard_after_forward": True, "pp": 2}, "parallel.reshard_after_forward"),
    ({"dp": 8, "tp": 2}, "parallel.dp"),  # 16 ranks for 8 workers
])
def test_resolve_plan_rejects_impossible_fixed_fields(fixed, field):
    with pytest.raises(ConfigError) as e:
        resolve_plan(ParallelConfig(**fixed), SPEC, 8, _eight_cpus(), 16)
    assert e.value.field == field


def test_memory_budget_is_a_config_field():
    topo = _eight_cpus()
    roomy = resolve_plan(ParallelConfig(), SPEC, 8, topo, 16)
    assert roomy.activation_checkpoint == "none"  # recompute only costs time when memory is ample
    with pytest.raises(ConfigError) as e:
        resolve_plan(ParallelConfig(memory_gib=0.001), SPEC, 8, topo, 16)
    assert e.value.field == "parallel.memory_gib" and "fits in memory" in e.value.message


def test_without_a_topology_the_default_is_data_parallel():
    p = resolve_plan(ParallelConfig(), SPEC, 4, None, 32)
    assert (p.dp, p.tp, p.pp, p.microbatches, p.micro_batch_rows) == (4, 1, 1, 1, 8)
    assert (p.activation_checkpoint, p.sequence_parallel, p.reshard_after_forward) == ("none", False, True)
    piped = default_plan({"pp": 2}, 4, 32)
    assert (piped.dp, piped.microbatches, piped.micro_batch_rows, piped.reshard_after_forward) == (2, 2, 8, False)
    with pytest.raises(ConfigError, match="parallel.microbatches"):
        default_plan({"microbatches": 3}, 4, 32)  # 4 · 3 · 2 = 24 rows, not 32


# --- the planner offers only what the runtime builds -------------------------------------


def test_every_candidate_is_a_valid_plan_of_the_runtime_space():
    topo = load_topology("h100-nvlink-ib-64x8").for_world(16)
    lay = enumerate_layouts(SPEC, topo)
    seen = set()
    for i in range(lay.size):
        p = plan_at(lay, i)  # constructing validates: SP needs tp > 1, 1F1B m ≥ pp, ...
        assert p.world_size == 16 and p.global_batch == SPEC.global_batch
        assert 8 % p.tp == 0 and SPEC.heads % p.tp == 0 and SPEC.layers % p.pp == 0
        assert not (p.sequence_parallel and SPEC.seq_len % p.tp)
        seen.add((p.activation_checkpoint, p.sequence_parallel, p.reshard_after_forward))
    # Every option of the runtime appears, and nothing else (ZeRO-1 is not an FSDP2 mode).
    assert {a for a, _, _ in seen} == {"none", "selective", "full"}
    assert {s for _, s, _ in seen} == {False, True} and {r for _, _, r in seen} == {False, True}


def test_plan_returns_parallel_plans():
    res = plan(SPEC, _eight_cpus(), top_k=3)
    assert all(isinstance(s.plan, ParallelPlan) for s in res.alternatives)
    steps = [s.step_time_s for s in res.alternatives]
    assert steps == sorted(steps)
