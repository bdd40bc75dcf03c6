"""Batch size: a compute-scaled default, capped at the critical batch from the noise scale.

Default (DeepSeek LLM, arXiv 2401.02954, fitted on their runs): B_opt = 0.292 * C^0.3271
tokens for training compute C FLOPs. DeepSeek measure C with non-embedding FLOPs/token; we
feed it the plan's 6ND, which is close for large models.

Cap: the critical batch of McCandlish et al. 2018 (arXiv 1812.06162), approximated by the
simple noise scale B_noise = tr(Sigma) / |G|^2. Above it, more batch buys little speed for a
lot of compute. It is measured online, for free, from gradient norms the training loop
already has:

    |G_small|^2  squared norm of a smaller batch's gradient (batch B_small)
    |G_big|^2    squared norm of the step's whole gradient (batch B_big)

McCandlish take B_small = one rank's batch, before the all-reduce. FSDP2 reduce-scatters
inside backward, so a rank's full pre-reduction gradient never exists; the training loop
(train/loop.py) therefore takes B_small = the step's first micro-batch over all dp ranks
and B_big = all its accumulated micro-batches. The estimator is the same; the batch
controller keeps at least 2 micro-batches per step so that both sizes exist.

    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)     (unbiased)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)                (unbiased)

Each is noisy (either can be negative on one step), so each is smoothed by its own EMA and
only then divided. Pass batch sizes in *tokens* and B_noise comes out in tokens. With
several ranks, averaging |G_small|^2 over ranks before ``update`` lowers the variance
without biasing anything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

# DeepSeek LLM's fitted optimum, tokens per step as a function of training FLOPs.
DEEPSEEK_B_COEF = 0.292
DEEPSEEK_B_EXP = 0.3271
DEEPSEEK_SOURCE = "DeepSeek LLM (arXiv 2401.02954) fitted B_opt = 0.292 * C^0.3271 tokens"


def deepseek_batch_tokens(compute: float) -> float:
    """DeepSeek LLM's fitted optimal batch size in tokens for ``compute`` training FLOPs."""
    if not (compute > 0 and math.isfinite(compute)):
        raise ValueError(f"compute must be a positive finite FLOP count, got {compute!r}")
    return DEEPSEEK_B_COEF * compute**DEEPSEEK_B_EXP


@dataclass(frozen=True)
class BatchChoice:
    tokens: int  # what to train with
    default_tokens: float  # DeepSeek B_opt(C)
    critical_tokens: float | None  # measured B_noise, if any
    rule: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_batch(compute: float, critical_tokens: float | None = None) -> BatchChoice:
    """min(DeepSeek B_opt(C), critical batch); the cap only applies once it is measured."""
    default = deepseek_batch_tokens(compute)
    if critical_tokens is None:
        return BatchChoice(
            tokens=max(1, round(default)),
            default_tokens=default,
            critical_tokens=None,
            rule=f"{DEEPSEEK_SOURCE}; no critical-batch measurement to cap it",
        )
    if not (critical_tokens > 0 and math.isfinite(critical_tokens)):
        raise ValueError(
            f"critical batch must be a positive finite token count, got {critical_tokens!r}"
        )
    if critical_tokens < default:
        return BatchChoice(
            tokens=max(1, round(critical_tokens)),
            default_tokens=default,
            critical_tokens=critical_tokens,
            rule="capped at the critical batch (gradient noise scale)",
        )
    return BatchChoice(
        tokens=max(1, round(default)),
        default_tokens=default,
        critical_tokens=critical_tokens,
        rule=f"{DEEPSEEK_SOURCE}; below the critical batch",
    )


def cap_batch(batch_tokens: float, noise_scale: float | None) -> float:
    """The training loop's online cap: never exceed the current noise-scale estimate."""
    if noise_scale is None or not math.isfinite(noise_scale) or noise_scale <= 0:
        return batch_tokens
    return min(batch_tokens, noise_scale)


@dataclass(frozen=True)
class NoiseScaleConfig:
    """Settings of :class:`GradientNoiseScale` (loadable with ``ogi_ray.config.from_dict``)."""

    ema_decay: float = 0.95  # per update; ~20-step memory
    min_updates: int = 10  # report nothing before this many updates

    def validate(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: must be in [0, 1), got {self.ema_decay!r}")
        if self.min_updates < 1:
            raise ValueError(f"min_updates: must be >= 1, got {self.min_updates!r}")


class GradientNoiseScale:
    """Two-batch gradient-noise-scale estimator (McCandlish et al. 2018, appendix A.1).

    Pure Python state, no tensors: the caller passes squared norms as floats.
    """

    _STATE_VERSION = 1

    def __init__(self, config: NoiseScaleConfig | None = None) -> None:
        self.config = config or NoiseScaleConfig()
        self.config.validate()
        self._g2_ema = 0.0  # EMA of the |G|^2 estimates
        self._trace_ema = 0.0  # EMA of the tr(Sigma) estimates
        self._updates = 0

    @staticmethod
    def estimates(
        small_sq_norm: float, big_sq_norm: float, b_small: float, b_big: float
    ) -> tuple[float, float]:
        """One step's unbiased (|G|^2, tr(Sigma)) from the two squared norms."""
        for name, v in (("small_sq_norm", small_sq_norm), ("big_sq_norm", big_sq_norm)):
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (b_small > 0 and math.isfinite(b_small) and math.isfinite(b_big)):
            raise ValueError(f"batch sizes must be finite and > 0, got {b_small!r}, {b_big!r}")
        if b_big <= b_small:
            raise ValueError(
                f"b_big must exceed b_small (got {b_big!r} <= {b_small!r}); "
                "one micro-batch per step gives no second batch size to compare"
            )
        g2 = (b_big * big_sq_norm - b_small * small_sq_norm) / (b_big - b_small)
        trace = (small_sq_norm - big_sq_norm) / (1.0 / b_small - 1.0 / b_big)
        return g2, trace

    def update(
        self, small_sq_norm: float, big_sq_norm: float, b_small: float, b_big: float
    ) -> float | None:
        """Fold in one step; return the smoothed B_noise, or None while it is not yet defined."""
        g2, trace = self.estimates(small_sq_norm, big_sq_norm, b_small, b_big)
        d = self.config.ema_decay
        self._g2_ema = d * self._g2_ema + (1.0 - d) * g2
        self._trace_ema = d * self._trace_ema + (1.0 - d) * trace
        self._updates += 1
        return self.estimate

    @property
    def _debias(self) -> float:
        # Adam-style correction; it cancels in the ratio but matters for the reported parts.
        return 1.0 - self.config.ema_decay**self._updates if self._updates else 1.0

    @property
    def grad_sq_norm(self) -> float:
        """Smoothed |G|^2 (bias-corrected)."""
        return self._g2_ema / self._debias

    @property
    def trace_sigma(self) -> float:
        """Smoothed tr(Sigma) (bias-corrected)."""
        return self._trace_ema / self._debias

    @property
    def updates(self) -> int:
        return self._updates

    @property
    def estimate(self) -> float | None:
        """B_noise = tr(Sigma)/|G|^2 from the smoothed parts; None until both are positive."""
        if self._updates < self.config.min_updates or self._g2_ema <= 0 or self._trace_ema <= 0:
            return None
        return self._trace_ema / self._g2_ema

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (plain floats and ints), for checkpoints."""
        return {
            "version": self._STATE_VERSION,
            "config": asdict(self.config),
            "g2_ema": self._g2_ema,
            "trace_ema": self._trace_ema,
            "updates": self._updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"version", "config", "g2_ema", "trace_ema", "updates"} - set(state)
        if missing:
            raise ValueError(f"noise-scale state is missing {sorted(missing)}")
        if state["version"] != self._STATE_VERSION:
            raise ValueError(
                f"noise-scale state version {state['version']!r} is not {self._STATE_VERSION}"
            )
        config = NoiseScaleConfig(**state["config"])
        config.validate()
        self.config = config
        self._g2_ema = float(state["g2_ema"])
        self._trace_ema = float(state["trace_ema"])
        self._updates = int(state["updates"])
