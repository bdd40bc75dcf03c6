"""Assemble one plan: law + budget (+ inference demand, mixture, critical batch) -> dict.

The dict is what ``ogi plan --json`` prints. Top-level sizes are the compute-optimal ones;
``inference_aware`` repeats the derived quantities (batch, raw tokens per modality) for the
inference-aware model. ``recommended`` names the one to train: inference-aware whenever
lifetime inference tokens were given, since it minimises total FLOPs at the same loss.
``plan_document`` turns that into the YAML written by ``--write`` (top-level key ``plan``).
"""

from __future__ import annotations

import math
from typing import Any

from ogi_ray.scaling.batch import choose_batch
from ogi_ray.scaling.inference import inference_aware_size
from ogi_ray.scaling.law import PRESET_SOURCES, ScalingLaw
from ogi_ray.scaling.tokens import Mixture, token_budget

NO_MIXTURE_NOTE = (
    "no mixture given: tokens are effective (text-equivalent) tokens and "
    "tokens_by_modality is empty; pass --mixture to split them"
)


def _clean(value: Any) -> Any:
    """Replace non-finite floats by None so the plan is valid JSON and YAML."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _derived(
    training_flops: float, tokens: float, mixture: Mixture | None, critical_batch: float | None
) -> dict[str, Any]:
    batch = choose_batch(training_flops, critical_batch)
    budget = token_budget(mixture, tokens) if mixture is not None else None
    return {
        "batch_tokens": batch.tokens,
        "batch": batch.as_dict(),
        "tokens_by_modality": budget["raw_tokens_by_modality"] if budget else {},
        "token_budget": budget,
    }


def make_plan(
    law: ScalingLaw,
    compute: float,
    *,
    inference_tokens: float = 0.0,
    mixture: Mixture | None = None,
    critical_batch: float | None = None,
) -> dict[str, Any]:
    """Everything ``ogi plan`` reports, as plain JSON-ready values."""
    ia = inference_aware_size(law, compute, inference_tokens)
    opt = ia.compute_optimal
    plan: dict[str, Any] = {
        "constants": {**law.as_dict(), "source": PRESET_SOURCES.get(law.name, law.name)},
        "compute": compute,
        "n_params": opt.n_params,
        "tokens": opt.tokens,
        "tokens_per_param": opt.tokens_per_param,
        "loss": opt.loss,
        "exponent_n": law.exponent_n,
        "exponent_d": law.exponent_d,
        "G": law.G,
        **_derived(opt.compute, opt.tokens, mixture, critical_batch),
        "inference_aware": {
            **ia.as_dict(),
            **_derived(
                ia.inference_aware.compute, ia.inference_aware.tokens, mixture, critical_batch
            ),
        },
        "recommended": "inference_aware" if inference_tokens > 0 else "compute_optimal",
        "notes": [] if mixture is not None else [NO_MIXTURE_NOTE],
    }
    return _clean(plan)


def plan_document(plan: dict[str, Any]) -> dict[str, Any]:
    """The ``--write`` YAML: the recommended allocation under a top-level ``plan`` key."""
    chosen = plan["inference_aware"] if plan["recommended"] == "inference_aware" else plan
    budget = chosen["token_budget"]
    training_flops = (
        chosen["training_flops"] if chosen is not plan else 6.0 * plan["n_params"] * plan["tokens"]
    )
    return {
        "plan": {
            "sizing": plan["recommended"],
            "n_params": int(round(chosen["n_params"])),
            "tokens": int(round(chosen["tokens"])),
            "batch_tokens": int(chosen["batch_tokens"]),
            "tokens_by_modality": {
                m: int(round(v)) for m, v in chosen["tokens_by_modality"].items()
            },
            "constants": plan["constants"]["name"],
            "compute": float(plan["compute"]),
            "training_flops": float(training_flops),
            "loss": float(chosen["loss"]),
            "exponent_n": float(plan["exponent_n"]),
            "exponent_d": float(plan["exponent_d"]),
            "inference_tokens": float(plan["inference_aware"]["inference_tokens"]),
            "mixture": budget["source_file"] if budget else None,
        }
    }
