"""Scaling planner: how big a model, how many tokens, what batch, for a FLOP budget.

Pure numpy/scipy (no torch, no ray), so it runs anywhere the CLI does. Data flow:

    constants (preset | YAML | `ogi plan fit RUNS.csv` → fit.py) ──► ScalingLaw (law.py)
                                                                        │
    --compute C ──► law.compute_optimal(C): closed-form N_opt, D_opt, exponents from α, β
                        │
    --inference-tokens T ──► inference.py: least 6ND + 2NT at the same loss (Sardana et al.)
                        │                  + what the seed's "20-40 % smaller" rule costs
    --mixture FILE ──► tokens.py: D (effective tokens) → raw tokens per modality and source
                        │
    batch.py: DeepSeek B_opt(C), capped at the critical batch (gradient noise scale);
              GradientNoiseScale is fed online by the training loop
                        ▼
    plan.py: one JSON-ready dict ──► report.py (table, fit plot) / cli.py (`ogi plan`)

The planner's D always counts *effective* tokens (Σ raw × exchange rate, DESIGN decision 1),
and its exponents are always computed from the constants in use (decision 2).
"""

from ogi_ray.scaling.batch import GradientNoiseScale, NoiseScaleConfig, choose_batch
from ogi_ray.scaling.errors import ScalingInputError
from ogi_ray.scaling.fit import FitResult, RunsData, bootstrap_law, fit_law, read_runs_csv
from ogi_ray.scaling.inference import InferenceAwarePlan, inference_aware_size
from ogi_ray.scaling.law import PRESETS, Allocation, ScalingLaw, load_law
from ogi_ray.scaling.plan import make_plan
from ogi_ray.scaling.tokens import MODALITIES, Mixture, load_mixture, token_budget

__all__ = [
    "MODALITIES",
    "PRESETS",
    "Allocation",
    "FitResult",
    "GradientNoiseScale",
    "InferenceAwarePlan",
    "Mixture",
    "NoiseScaleConfig",
    "RunsData",
    "ScalingInputError",
    "ScalingLaw",
    "bootstrap_law",
    "choose_batch",
    "fit_law",
    "inference_aware_size",
    "load_law",
    "load_mixture",
    "make_plan",
    "read_runs_csv",
    "token_budget",
]
