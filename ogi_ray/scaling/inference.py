"""Inference-aware sizing (Sardana et al. 2023, "Beyond Chinchilla-Optimal", arXiv 2401.00448).

A model that will serve T tokens over its lifetime costs

    total FLOPs = 6 N D (training) + 2 N T (inference: forward pass only)

The compute-optimal model for budget C fixes a target loss L* = L(N_opt, D_opt). Among all
(N, D) reaching L* we pick the one with the least total FLOPs. On the iso-loss curve
D(N) = (B / (L* - E - A N^-alpha))^(1/beta), and

    d total / dN = 6 D(N) (1 - alpha u / (beta (L* - E - u))) + 2 T,    u = A N^-alpha

The training term vanishes at N_opt (the compute-optimal point is also the cheapest way to
reach L*), so for T > 0 the optimum lies strictly between the smallest model that can reach
L* at all and N_opt: smaller and trained longer. How much smaller depends on T / D_opt.

The seed's policy ("typically 20-40 % smaller than compute-optimal") is priced here too:
its loss cost at the same training compute, and its total FLOPs at the same loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from scipy.optimize import brentq

from ogi_ray.scaling.law import TRAIN_FLOPS_PER_PARAM_TOKEN, Allocation, ScalingLaw

# Forward pass only, per parameter per served token.
INFERENCE_FLOPS_PER_PARAM_TOKEN = 2.0
# The seed's "typically 20-40 % smaller" policy, priced at these points.
SEED_SHRINKS = (0.2, 0.3, 0.4)
# Sardana et al. trained up to 10,000 tokens/param and saw fitted laws overestimate the
# value of extra tokens at extreme ratios; past this we warn that the law is extrapolated.
SARDANA_MAX_TOKENS_PER_PARAM = 10_000
# Below this reduction we say the compute-optimal size stands.
NEGLIGIBLE_REDUCTION = 0.01


@dataclass(frozen=True)
class ShrinkCost:
    """What training a model ``shrink`` smaller than N_opt costs at this budget."""

    shrink: float
    n_params: float
    loss_at_equal_compute: float  # same training FLOPs C, so D = C / 6N
    delta_loss_at_equal_compute: float
    tokens_at_equal_loss: float  # tokens needed to still reach L*
    training_flops_at_equal_loss: float
    total_flops_at_equal_loss: float  # training + 2 N T
    total_vs_inference_aware: float  # ratio - 1 against the inference-aware optimum
    total_vs_compute_optimal: float  # ratio - 1 against the compute-optimal model


@dataclass(frozen=True)
class InferenceAwarePlan:
    inference_tokens: float
    target_loss: float
    compute_optimal: Allocation
    inference_aware: Allocation  # compute = its training FLOPs 6ND, loss = target_loss
    total_flops_compute_optimal: float
    total_flops_inference_aware: float
    shrink_costs: list[ShrinkCost] = field(default_factory=list)

    @property
    def params_reduction(self) -> float:
        """1 - N_ia / N_opt: how much smaller than compute-optimal."""
        return 1.0 - self.inference_aware.n_params / self.compute_optimal.n_params

    @property
    def total_flops_saving(self) -> float:
        """1 - total_ia / total_opt: total (training + inference) FLOPs saved."""
        return 1.0 - self.total_flops_inference_aware / self.total_flops_compute_optimal

    @property
    def inference_to_training_tokens(self) -> float:
        return self.inference_tokens / self.compute_optimal.tokens

    def verdict(self) -> str:
        r = self.params_reduction
        ratio = self.inference_to_training_tokens
        if self.inference_tokens == 0:
            return "no inference demand given: the compute-optimal size stands"
        if r < NEGLIGIBLE_REDUCTION:
            return (
                f"inference tokens are {ratio:.3g}x the training tokens: the compute-optimal "
                f"size stands (the optimum is only {100 * r:.2f} % smaller and saves "
                f"{100 * self.total_flops_saving:.3f} % of total FLOPs)"
            )
        text = (
            f"inference tokens are {ratio:.3g}x the training tokens: train a model "
            f"{100 * r:.1f} % smaller on {self.inference_aware.tokens_per_param:.0f} tokens/param, "
            f"saving {100 * self.total_flops_saving:.1f} % of total FLOPs"
        )
        if self.inference_aware.tokens_per_param > SARDANA_MAX_TOKENS_PER_PARAM:
            text += (
                f" (beyond the {SARDANA_MAX_TOKENS_PER_PARAM:,} tokens/param Sardana et al. "
                "trained to: the law is extrapolated and likely overstates the gain)"
            )
        return text

    def as_dict(self) -> dict[str, object]:
        ia = self.inference_aware
        return {
            "n_params": ia.n_params,
            "tokens": ia.tokens,
            "tokens_per_param": ia.tokens_per_param,
            "loss": ia.loss,
            "training_flops": ia.compute,
            "inference_tokens": self.inference_tokens,
            "inference_to_training_tokens": self.inference_to_training_tokens,
            "params_reduction": self.params_reduction,
            "total_flops": self.total_flops_inference_aware,
            "total_flops_compute_optimal": self.total_flops_compute_optimal,
            "total_flops_saving": self.total_flops_saving,
            "verdict": self.verdict(),
            "seed_rule_costs": [asdict(s) for s in self.shrink_costs],
        }


def total_flops(n_params: float, tokens: float, inference_tokens: float) -> float:
    return (
        TRAIN_FLOPS_PER_PARAM_TOKEN * n_params * tokens
        + INFERENCE_FLOPS_PER_PARAM_TOKEN * n_params * inference_tokens
    )


def _slope(log_n: float, law: ScalingLaw, target: float, inference_tokens: float) -> float:
    """d total / dN at N = exp(log_n) along the iso-loss curve, divided by 2."""
    n = math.exp(log_n)
    u = law.A * n**-law.alpha
    headroom = target - law.E - u
    if headroom <= 0:
        return -math.inf
    d = (law.B / headroom) ** (1.0 / law.beta)
    return 3.0 * d * (1.0 - law.alpha * u / (law.beta * headroom)) + inference_tokens


def inference_aware_size(
    law: ScalingLaw,
    compute: float,
    inference_tokens: float,
    shrinks: tuple[float, ...] = SEED_SHRINKS,
) -> InferenceAwarePlan:
    """Least total-FLOPs (N, D) reaching the loss of the compute-optimal model at ``compute``."""
    if not (inference_tokens >= 0 and math.isfinite(inference_tokens)):
        raise ValueError(f"inference tokens must be finite and >= 0, got {inference_tokens!r}")
    opt = law.compute_optimal(compute)
    target = opt.loss
    if inference_tokens == 0:
        n = opt.n_params
    else:
        hi = math.log(opt.n_params)
        floor = math.log(law.min_params_for_loss(target))
        # Walk the lower bracket towards the unlimited-data limit until the slope turns negative.
        gap = 1e-1
        lo = floor + gap
        while _slope(lo, law, target, inference_tokens) > 0 and gap > 1e-15:
            gap *= 1e-2
            lo = floor + gap
        if _slope(lo, law, target, inference_tokens) > 0:
            n = math.exp(lo)  # T so large that the smallest feasible model wins
        else:
            n = math.exp(
                brentq(
                    _slope,
                    lo,
                    hi,
                    args=(law, target, inference_tokens),
                    xtol=1e-12,
                    rtol=1e-14,
                    maxiter=500,
                )
            )
    d = law.tokens_for_loss(n, target)
    ia = Allocation(n_params=n, tokens=d, compute=TRAIN_FLOPS_PER_PARAM_TOKEN * n * d, loss=target)
    total_ia = total_flops(n, d, inference_tokens)
    total_opt = total_flops(opt.n_params, opt.tokens, inference_tokens)
    costs = [_shrink_cost(law, opt, s, inference_tokens, total_ia, total_opt) for s in shrinks]
    return InferenceAwarePlan(
        inference_tokens=inference_tokens,
        target_loss=target,
        compute_optimal=opt,
        inference_aware=ia,
        total_flops_compute_optimal=total_opt,
        total_flops_inference_aware=total_ia,
        shrink_costs=costs,
    )


def _shrink_cost(
    law: ScalingLaw,
    opt: Allocation,
    shrink: float,
    inference_tokens: float,
    total_ia: float,
    total_opt: float,
) -> ShrinkCost:
    if not 0 <= shrink < 1:
        raise ValueError(f"shrink must be in [0, 1), got {shrink!r}")
    n = (1.0 - shrink) * opt.n_params
    loss_eq_c = law.loss_at_compute(n, opt.compute)
    d_eq_l = law.tokens_for_loss(n, opt.loss)
    train = TRAIN_FLOPS_PER_PARAM_TOKEN * n * d_eq_l
    total = total_flops(n, d_eq_l, inference_tokens)
    return ShrinkCost(
        shrink=shrink,
        n_params=n,
        loss_at_equal_compute=loss_eq_c,
        delta_loss_at_equal_compute=loss_eq_c - opt.loss,
        tokens_at_equal_loss=d_eq_l,
        training_flops_at_equal_loss=train,
        total_flops_at_equal_loss=total,
        total_vs_inference_aware=total / total_ia - 1.0,
        total_vs_compute_optimal=total / total_opt - 1.0,
    )
