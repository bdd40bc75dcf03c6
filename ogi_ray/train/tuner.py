"""Loss-weight tuner: keeps the objectives' weighted gradient norms balanced.

The pretraining loss is L_pre = Σ_i λ_i L_i. Each step the worker measures, for every
objective present in its batch, the raw gradient norm g_i = ‖∂L_i/∂h‖ of the *unweighted*
loss at the shared representation h (the backbone output, DESIGN decision 6) and
reports it here. The tuner treats balance as a set of constraints

    λ_i ĝ_i ≤ (1 + ε) · mean_j(λ_j ĝ_j)        for every present objective i

(ĝ = EMA-smoothed g) and solves them by dual ascent, one step per report:

    λ*(μ)_i  ∝ λ⁰_i · exp(−μ_i)                 best response of min KL(λ ‖ λ⁰) s.t. the
                                                 constraints, on the present objectives
    c_i      = log(λ*_i ĝ_i / mean_j λ*_j ĝ_j) − log(1 + ε)        (≤ 0 when satisfied)
    μ_i      ← max(0, μ_i + dual_lr · c_i)       projected dual ascent
    λ        ← λ moved towards λ*(μ), each ratio λ_new/λ_old within [1/max_step, max_step]

λ⁰ are the phase's hand-tuned weights (``set_phase``). λ always sums to the number of
objectives K; objectives absent from a step keep their λ (the present ones share the mass
they already hold). At equilibrium every constrained objective sits at (1+ε)·mean and the
one unconstrained objective at ≥ (1 − (K'−1)ε)·mean (K' present), so the weighted norms'
max/min is at most (1+ε)/(1 − (K'−1)ε): 1.31 for ε = 0.05, K' = 5.

Data flow: workers → ``LossWeightTuner.report(step, {name: g})`` (fire and forget) →
``tuner_update`` → ``weights()`` fetched every few steps → λ in the step's loss sum.
``LossWeightTuner`` is a plain class; the launcher makes it an actor with
``ray.remote(LossWeightTuner)``. Everything else here is pure Python math (no torch, no Ray)
and the state is JSON-serialisable so it can ride in a checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

OBJECTIVES = ("lm", "vision", "align", "world", "embod")
_TINY = 1e-12  # floor for norms before taking logs
_MU_MAX = 50.0  # cap on μ: exp(−50) already silences an objective; keeps μ finite


@dataclass(kw_only=True)
class TunerConfig:
    objectives: list[str] = field(default_factory=lambda: list(OBJECTIVES))
    epsilon: float = 0.05  # constraint slack: λ_i ĝ_i ≤ (1+ε)·mean
    # Step size of the dual ascent on μ (log units). μ enters log λ with slope −1 and c is
    # a log ratio, so at 1.0 an update moves log λ by the violation itself; near 2 it
    # overshoots by as much as it corrects and oscillates (on recorded norms: 0.08 of
    # steps balanced at 2.0, 0.94 at 1.0, 0.72 at 0.5, which lags the spiky align norm).
    dual_lr: float = 1.0
    # Smoothing of the reported norms, ĝ ← ema·ĝ + (1−ema)·g: contrastive (align) norms
    # jump by e^±0.7 from step to step, and λ should follow the trend, not the noise.
    ema: float = 0.95
    max_step: float = 1.2  # each λ changes by at most this factor per update
    warmup: int = 10  # updates (per phase) that only smooth norms, λ frozen
    enabled: bool = True  # False: λ stays at the phase's initial weights
    initial: dict[str, float] | None = None  # λ⁰ per objective (normalised); None = all 1

    def validate(self) -> None:
        k = len(self.objectives)
        if k == 0 or len(set(self.objectives)) != k:
            raise ValueError(
                f"objectives: must be a non-empty list of unique names, got {self.objectives}"
            )
        if not 0 < self.epsilon < (1.0 / (k - 1) if k > 1 else math.inf):
            raise ValueError(
                f"epsilon: must lie in (0, 1/(K-1)) for K={k} objectives, got {self.epsilon}"
            )
        if not 0 < self.dual_lr < 2:
            raise ValueError(f"dual_lr: must lie in (0, 2) (>= 2 overshoots and oscillates), got {self.dual_lr}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema: must lie in [0, 1), got {self.ema}")
        if self.max_step <= 1:
            raise ValueError(f"max_step: must be > 1 (a factor), got {self.max_step}")
        if self.warmup < 0:
            raise ValueError(f"warmup: must be >= 0, got {self.warmup}")
        if self.initial is not None:
            _check_lambdas(self.initial, self.objectives, "initial")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TunerConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"tuner config: unknown fields {sorted(unknown)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg


@dataclass(kw_only=True)
class TunerState:
    lambdas: dict[str, float]  # current λ, sums to K
    base: dict[str, float]  # λ⁰ of the current phase, sums to K
    multipliers: dict[str, float]  # μ ≥ 0, one per objective
    smoothed: dict[str, float] = field(default_factory=dict)  # ĝ, objectives seen so far
    updates: int = 0  # reports applied, all phases
    phase_updates: int = 0  # reports applied in this phase (warm-up counter)
    last_step: int = -1  # highest step applied (the actor ignores steps ≤ this)
    phase: int = 0  # index of the current phase (set_phase)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TunerState:
        return cls(**copy.deepcopy(d))


def _check_lambdas(lams: dict[str, float], objectives: list[str], what: str) -> None:
    unknown = set(lams) - set(objectives)
    if unknown:
        raise ValueError(f"{what}: unknown objectives {sorted(unknown)} (known: {objectives})")
    bad = {k: v for k, v in lams.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        raise ValueError(f"{what}: weights must be finite and > 0, got {bad}")


def normalise(lams: dict[str, float], objectives: list[str]) -> dict[str, float]:
    """Missing objectives get 1.0; the result sums to len(objectives)."""
    full = {k: float(lams.get(k, 1.0)) for k in objectives}
    total = sum(full.values())
    return {k: v * len(objectives) / total for k, v in full.items()}


def init_state(cfg: TunerConfig) -> TunerState:
    cfg.validate()
    base = normalise(cfg.initial or {}, cfg.objectives)
    return TunerState(
        lambdas=dict(base), base=dict(base), multipliers={k: 0.0 for k in cfg.objectives}
    )


def _best_response(state: TunerState, present: list[str], mass: float) -> dict[str, float]:
    """λ*_i ∝ λ⁰_i exp(−μ_i) over the present objectives, scaled to their current mass."""
    logits = {k: math.log(state.base[k]) - state.multipliers[k] for k in present}
    top = max(logits.values())  # shift for a stable exp
    w = {k: math.exp(v - top) for k, v in logits.items()}
    z = sum(w.values())
    return {k: mass * v / z for k, v in w.items()}


def _violations(lams: dict[str, float], smoothed: dict[str, float], eps: float) -> dict[str, float]:
    """c_i = log(λ_i ĝ_i / mean_j λ_j ĝ_j) − log(1+ε) for the objectives in ``lams``."""
    weighted = {k: max(lams[k] * smoothed[k], _TINY) for k in lams}
    mean = sum(weighted.values()) / len(weighted)
    return {k: math.log(v / mean) - math.log1p(eps) for k, v in weighted.items()}


def _bounded_move(
    old: dict[str, float], target: dict[str, float], max_step: float
) -> dict[str, float]:
    """λ_i = clip(a·target_i, old_i/max_step, old_i·max_step) with the scalar a chosen so
    that Σ λ_i = Σ old_i. The clipped sum f(a) is non-decreasing and piecewise linear with
    breakpoints at bound_i/target_i, and Σ old/max_step < Σ old < Σ old·max_step, so the
    crossing lies between two breakpoints and linear interpolation there is exact."""
    mass = sum(old.values())
    target = {k: max(target[k], 1e-300) for k in old}  # exp(−μ) may underflow to 0

    def moved(a: float) -> dict[str, float]:
        return {k: min(max(a * target[k], old[k] / max_step), old[k] * max_step) for k in old}

    points = sorted(b / target[k] for k in old for b in (old[k] / max_step, old[k] * max_step))
    prev_a, prev_f = points[0], sum(moved(points[0]).values())  # = Σ old/max_step
    for a in points[1:]:
        f = sum(moved(a).values())
        if f >= mass:
            a_star = prev_a + (mass - prev_f) * (a - prev_a) / max(f - prev_f, _TINY)
            return moved(a_star)
        prev_a, prev_f = a, f
    return moved(points[-1])  # unreachable: f(last) = Σ old·max_step > mass


def tuner_update(state: TunerState, grad_norms: dict[str, float], cfg: TunerConfig) -> TunerState:
    """One tuner update from one step's raw per-objective gradient norms; returns a new state.

    ``grad_norms`` maps objective → ‖∂L_i/∂h‖ of the unweighted loss. Objectives absent
    from it, or with a non-finite or non-positive norm (no usable signal), are treated as
    absent: their λ, μ and ĝ are untouched.
    """
    unknown = set(grad_norms) - set(cfg.objectives)
    if unknown:
        raise ValueError(
            f"grad_norms: unknown objectives {sorted(unknown)} (known: {cfg.objectives})"
        )
    s = TunerState.from_dict(state.to_dict())
    present = [
        k for k in cfg.objectives
        if k in grad_norms and math.isfinite(grad_norms[k]) and grad_norms[k] > 0
    ]  # fmt: skip
    for k in present:
        g = float(grad_norms[k])
        s.smoothed[k] = g if k not in s.smoothed else cfg.ema * s.smoothed[k] + (1 - cfg.ema) * g
    s.updates += 1
    s.phase_updates += 1
    if not cfg.enabled or s.phase_updates <= cfg.warmup or len(present) < 2:
        return s  # a single objective has nothing to balance against

    mass = sum(s.lambdas[k] for k in present)
    # Dual ascent with the constraints evaluated at the best response λ*(μ), not at the
    # rate-limited λ: the multipliers then do not wind up while λ is still catching up.
    c = _violations(_best_response(s, present, mass), s.smoothed, cfg.epsilon)
    for k in present:
        s.multipliers[k] = min(_MU_MAX, max(0.0, s.multipliers[k] + cfg.dual_lr * c[k]))
    target = _best_response(s, present, mass)
    moved = _bounded_move({k: s.lambdas[k] for k in present}, target, cfg.max_step)
    s.lambdas.update(moved)
    return s


def weighted_norms(state: TunerState) -> dict[str, float]:
    """λ_i ĝ_i for every objective with a smoothed norm."""
    return {k: state.lambdas[k] * g for k, g in state.smoothed.items()}


def imbalance(state: TunerState) -> float:
    """max/min of the smoothed weighted norms λ_i ĝ_i (1.0 with fewer than two seen)."""
    w = list(weighted_norms(state).values())
    if len(w) < 2:
        return 1.0
    return max(w) / max(min(w), _TINY)


class LossWeightTuner:
    """Holds the tuner state for a run; the launcher wraps it with ``ray.remote``.

    ``report`` applies one update per training step and ignores any step ≤ the last
    applied one, so retried or duplicated reports are harmless. After a training
    rollback to an earlier checkpoint, restore the tuner from that checkpoint's
    ``state_dict()`` (it carries ``last_step``) so the replayed steps are applied again.
    """

    def __init__(
        self, cfg: TunerConfig | dict[str, Any] | None = None, state_path: str | None = None
    ) -> None:
        if cfg is None:
            cfg = TunerConfig()
        elif isinstance(cfg, dict):
            cfg = TunerConfig.from_dict(cfg)
        cfg.validate()
        self.cfg = cfg
        self.state = init_state(cfg)
        # With a state file (a local path or any pyarrow.fs URI), every report is persisted
        # (one whole-object write) and a restarted actor (Ray re-runs __init__) resumes
        # from it: a crash loses nothing already reported.
        self.state_path = state_path
        self._store = None
        if state_path:
            from ogi_ray.storage import Store

            parent, _, self._name = str(state_path).rstrip("/").rpartition("/")
            self._store = Store(parent or ".")
            if self._store.is_file(self._name):
                self.load_state_dict(json.loads(self._store.read_bytes(self._name)))

    def _persist(self) -> None:
        if self._store is not None:
            self._store.write_atomic(self._name, json.dumps(self.state_dict()).encode())

    def report(self, step: int, grad_norms: dict[str, float]) -> dict[str, float]:
        """Apply step ``step``'s norms (once: a retried or repeated step is ignored);
        returns ``metrics()`` after it, so the caller knows λ as of this step."""
        if step > self.state.last_step:
            self.state = tuner_update(self.state, grad_norms, self.cfg)
            self.state.last_step = int(step)
            self._persist()
        return self.metrics()

    def weights(self) -> dict[str, float]:
        return dict(self.state.lambdas)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for the metrics log: λ, μ, ĝ per objective and the imbalance."""
        out = {f"tuner/lambda/{k}": v for k, v in self.state.lambdas.items()}
        out |= {f"tuner/mu/{k}": v for k, v in self.state.multipliers.items()}
        out |= {f"tuner/gnorm/{k}": v for k, v in self.state.smoothed.items()}
        out["tuner/imbalance"] = imbalance(self.state)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.cfg), "state": self.state.to_dict()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if "config" in d:
            self.cfg = TunerConfig.from_dict(copy.deepcopy(d["config"]))
        self.state = TunerState.from_dict(d["state"])
        self._persist()

    def set_phase(self, initial_lambdas: dict[str, float] | None, phase: int = 0) -> dict[str, float]:
        """Start phase ``phase``: λ⁰ = λ = the given weights (normalised, missing ones 1.0;
        None = the config's ``initial``), μ = 0, warm-up restarts. Smoothed norms and the
        step counter carry over. Returns the new λ."""
        initial_lambdas = self.cfg.initial if initial_lambdas is None else initial_lambdas
        _check_lambdas(initial_lambdas or {}, self.cfg.objectives, "initial_lambdas")
        base = normalise(initial_lambdas or {}, self.cfg.objectives)
        self.state.base, self.state.lambdas = dict(base), dict(base)
        self.state.multipliers = {k: 0.0 for k in self.cfg.objectives}
        self.state.phase_updates = 0
        self.state.phase = int(phase)
        self._persist()
        return self.weights()
