"""The parametric loss law, its named constant sets, and the closed-form allocation.

    L(N, D) = E + A / N^alpha + B / D^beta          N parameters, D (effective) tokens

Under the usual training-compute approximation C = 6 N D, minimising L on that curve gives

    N_opt = G (C/6)^(beta/(alpha+beta)),   D_opt = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta))

The exponents are always derived from the constants in use (design decision 2): the
seed's alpha~0.34, beta~0.28 give N ~ C^0.452, not C^0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ogi_ray.config import from_dict, load_yaml
from ogi_ray.scaling.errors import ScalingInputError

# FLOPs per parameter per training token (forward 2 + backward 4).
TRAIN_FLOPS_PER_PARAM_TOKEN = 6.0


@dataclass(frozen=True, kw_only=True)
class ScalingLaw:
    """Constants of L(N, D) = E + A/N^alpha + B/D^beta (loss in nats per token)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "custom"

    def validate(self) -> None:
        # Messages start with the field name so ConfigError can point at the key.
        for key in ("E", "A", "B", "alpha", "beta"):
            value = getattr(self, key)
            if not math.isfinite(value):
                raise ValueError(f"{key}: must be a finite number, got {value!r}")
        if self.E < 0:
            raise ValueError(f"E: must be >= 0, got {self.E!r}")
        for key in ("A", "B", "alpha", "beta"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: must be > 0, got {getattr(self, key)!r}")

    # --- the law ---------------------------------------------------------------------

    def loss(self, n_params: float | np.ndarray, tokens: float | np.ndarray) -> float | np.ndarray:
        """Predicted loss; works elementwise on numpy arrays."""
        return (
            self.E + self.A / np.power(n_params, self.alpha) + self.B / np.power(tokens, self.beta)
        )

    def tokens_for_loss(self, n_params: float, target_loss: float) -> float:
        """Tokens a model of ``n_params`` needs to reach ``target_loss`` (inf if it never can)."""
        headroom = target_loss - self.E - self.A / n_params**self.alpha
        if headroom <= 0:
            return math.inf
        return (self.B / headroom) ** (1.0 / self.beta)

    def min_params_for_loss(self, target_loss: float) -> float:
        """Smallest model that reaches ``target_loss`` with unlimited data."""
        headroom = target_loss - self.E
        if headroom <= 0:
            return math.inf
        return (self.A / headroom) ** (1.0 / self.alpha)

    # --- compute-optimal allocation ------------------------------------------------

    @property
    def exponent_n(self) -> float:
        """a in N_opt ~ C^a (= beta/(alpha+beta))."""
        return self.beta / (self.alpha + self.beta)

    @property
    def exponent_d(self) -> float:
        """b in D_opt ~ C^b (= alpha/(alpha+beta)); a + b = 1."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:  # noqa: N802 - the paper's symbol
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def compute_optimal(self, compute: float) -> Allocation:
        """Closed-form loss-minimising (N, D) for training compute ``compute`` FLOPs."""
        if not (compute > 0 and math.isfinite(compute)):
            raise ValueError(f"compute must be a positive finite FLOP count, got {compute!r}")
        c6 = compute / TRAIN_FLOPS_PER_PARAM_TOKEN
        n = self.G * c6**self.exponent_n
        d = c6 / n  # identical to G^-1 (C/6)^b, and keeps 6ND == C exactly
        return Allocation(n_params=n, tokens=d, compute=compute, loss=float(self.loss(n, d)))

    def optimal_tokens(self, n_params: float) -> float:
        """D at which a model of ``n_params`` is compute-optimal: the budget C with
        N_opt(C) = n_params, then D_opt(C) = C / 6N (≈ 20 tokens per parameter)."""
        if not (n_params > 0 and math.isfinite(n_params)):
            raise ValueError(f"n_params must be positive and finite, got {n_params!r}")
        c6 = (n_params / self.G) ** (1.0 / self.exponent_n)
        return c6 / n_params

    def loss_at_compute(self, n_params: float, compute: float) -> float:
        """Loss of a model of ``n_params`` trained on all of ``compute`` (D = C / 6N)."""
        return float(self.loss(n_params, compute / (TRAIN_FLOPS_PER_PARAM_TOKEN * n_params)))

    def as_dict(self) -> dict[str, float | str]:
        return {
            "name": self.name,
            "E": self.E,
            "A": self.A,
            "B": self.B,
            "alpha": self.alpha,
            "beta": self.beta,
        }


@dataclass(frozen=True)
class Allocation:
    """One (N, D) choice and what it costs / achieves."""

    n_params: float
    tokens: float
    compute: float
    loss: float

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.n_params


PRESETS: dict[str, ScalingLaw] = {
    # Hoffmann et al. 2022 (arXiv 2203.15556) Approach 3, constants as printed (rounded) in the
    # paper body. The TeX source has alpha=0.3392, beta=0.2849, E=1.6934.
    "hoffmann": ScalingLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, name="hoffmann"),
    # Besiroglu et al. 2024 (Epoch AI, arXiv 2404.10102): refit of Approach 3 on data
    # reconstructed from Hoffmann's Fig. 4; consistent with Approaches 1/2 (~20 tokens/param).
    "epoch": ScalingLaw(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658, name="epoch"),
}

PRESET_SOURCES: dict[str, str] = {
    "hoffmann": "Hoffmann et al. 2022, Approach 3 (arXiv 2203.15556), rounded constants",
    "epoch": "Besiroglu et al. 2024, Epoch AI replication (arXiv 2404.10102)",
}


def load_law(spec: str) -> ScalingLaw:
    """A preset name (``hoffmann``, ``epoch``) or a YAML file with E, A, B, alpha, beta."""
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        raise ScalingInputError(
            "<arguments>",
            "--constants",
            f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a .yaml/.yml file",
        )
    data = load_yaml(path)
    try:
        law = from_dict(ScalingLaw, data, file=path)
    except ScalingInputError:
        raise
    except ValueError as e:  # ConfigError already names file and key; keep one error type
        file, field = getattr(e, "file", str(path)), getattr(e, "field", "")
        raise ScalingInputError(file, field, getattr(e, "message", str(e))) from e
    if "name" not in data:
        law = replace(law, name=str(path))
    return law
