"""The eval suite: run the configured benchmarks on one checkpoint, return the score
vector and what the lineage must record to re-run it.

    SuiteConfig (threads, one Config per benchmark, which to run) + LoadedModel
      ─► for each benchmark in BENCHMARKS order:
           skip_reason → skipped {name: reason}, or
           data_sha256 → Descriptor(name, version, data hash, config) ─► run → scores
      ─► SuiteResult(scores {name: float}, descriptors, skipped, seconds per benchmark)
      ─► recorded_scores(): {name: "%.6f"} for the attestation record

Everything runs on CPU under ``common.deterministic(threads)``: the same weights, data,
config and thread count give the same bits on the same CPU type and torch build, so a
verifier re-runs a recorded vector from the checkpoint and compares the strings.
``QUICK`` is a configuration that costs seconds (tests, smoke runs); ``SuiteConfig()``
is the full one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

from ogi_ray.evals import digits, embodied, heldout, humaneval, world
from ogi_ray.evals.common import Descriptor, EvalError, LoadedModel, deterministic, format_score

BENCHMARKS: dict[str, ModuleType] = {m.NAME: m for m in (heldout, humaneval, digits, world, embodied)}


@dataclass(kw_only=True)
class SuiteConfig:
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))  # which to run (always in BENCHMARKS order)
    threads: int = 1  # torch intra-op threads (part of what makes the bits repeat)
    heldout: heldout.Config = field(default_factory=heldout.Config)
    humaneval: humaneval.Config = field(default_factory=humaneval.Config)
    digits: digits.Config = field(default_factory=digits.Config)
    world: world.Config = field(default_factory=world.Config)
    metaworld: embodied.Config = field(default_factory=embodied.Config)

    def validate(self) -> None:
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS]
        if unknown:
            raise EvalError(f"benchmarks: unknown {unknown} (known: {list(BENCHMARKS)})")
        if self.threads < 1:
            raise EvalError("threads: must be >= 1")


QUICK = SuiteConfig(
    humaneval=humaneval.Config(n_problems=4, max_new_tokens=16, samples_per_problem=1),
    digits=digits.Config(max_samples=200),
    world=world.Config(rows_per_source=8),
    metaworld=embodied.Config(seeds=[1000], max_steps=20),
)


@dataclass
class SuiteResult:
    scores: dict[str, float]
    descriptors: list[Descriptor]
    skipped: dict[str, str]  # benchmark → why it did not apply
    seconds: dict[str, float]  # benchmark → wall time (not recorded: not deterministic)

    def recorded_scores(self) -> dict[str, str]:
        return {k: format_score(v) for k, v in sorted(self.scores.items())}

    def to_json(self) -> dict[str, Any]:
        """What an attestation records: the scores as strings and the benchmark descriptors."""
        return {"scores": self.recorded_scores(), "benchmarks": [d.to_json() for d in self.descriptors],
                "skipped": dict(self.skipped)}  # fmt: skip


def run_suite(lm: LoadedModel, config: SuiteConfig | None = None) -> SuiteResult:
    """Run every configured benchmark that applies to ``lm``; see the module docstring."""
    config = config or SuiteConfig()
    config.validate()
    lm.model.eval()
    scores: dict[str, float] = {}
    descriptors, skipped, seconds = [], {}, {}
    with deterministic(config.threads):
        for name, mod in BENCHMARKS.items():
            if name not in config.benchmarks:
                continue
            cfg = getattr(config, name)
            reason = mod.skip_reason(lm, cfg)
            if reason is not None:
                skipped[name] = reason
                continue
            t0 = time.perf_counter()
            desc = Descriptor(mod.NAME, mod.VERSION, mod.data_sha256(lm, cfg), asdict(cfg))
            try:
                got = mod.run(lm, cfg)
            except EvalError as e:  # the data lacks what it needs (e.g. no held-out video): said, not fatal
                skipped[name] = str(e)
                continue
            descriptors.append(desc)
            clash = scores.keys() & got.keys()
            if clash:
                raise EvalError(f"{name}: score names {sorted(clash)} already given by another benchmark")
            scores.update(got)
            seconds[name] = time.perf_counter() - t0
    return SuiteResult(scores, descriptors, skipped, seconds)


def config_from_json(benchmarks: list[dict[str, Any]], threads: int) -> SuiteConfig:
    """The SuiteConfig that produced recorded ``benchmarks`` descriptors (to re-run them).

    Refuses a descriptor whose benchmark is unknown or whose version this code is not."""
    from ogi_ray.config import from_dict

    kwargs: dict[str, Any] = {}
    for i, d in enumerate(benchmarks):
        name = d.get("name")
        if name not in BENCHMARKS:
            raise EvalError(f"benchmarks[{i}].name: unknown benchmark {name!r} (known: {list(BENCHMARKS)})")
        if d.get("version") != BENCHMARKS[name].VERSION:
            raise EvalError(f"benchmarks[{i}].version: {name} {d.get('version')!r} recorded, this code runs "
                            f"{BENCHMARKS[name].VERSION!r}")  # fmt: skip
        kwargs[name] = from_dict(BENCHMARKS[name].Config, d.get("config", {}), prefix=f"benchmarks[{i}].config")
    return SuiteConfig(benchmarks=[d["name"] for d in benchmarks], threads=threads, **kwargs)


def check_recorded(lm: LoadedModel, recorded: dict[str, Any], threads: int) -> list[str]:
    """Re-run a recorded eval vector (``SuiteResult.to_json()``) on ``lm``; [] when every
    data hash and every score string is reproduced, else one line per difference."""
    result = run_suite(lm, config_from_json(recorded["benchmarks"], threads))
    problems = []
    now = {d.name: d.data_sha256 for d in result.descriptors}
    for d in recorded["benchmarks"]:
        if now.get(d["name"]) != d["data_sha256"]:
            problems.append(f"{d['name']}: data hash {now.get(d['name'])} differs from the recorded {d['data_sha256']}")
    got, want = result.recorded_scores(), recorded["scores"]
    for k in sorted(set(got) | set(want)):
        if got.get(k) != want.get(k):
            problems.append(f"{k}: re-run gives {got.get(k)}, recorded {want.get(k)}")
    return problems
