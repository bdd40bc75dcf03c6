"""Training objectives as pure functions of model outputs and batch tensors.

No Ray and no torch.distributed: the step (``ogi_ray.train.loop``) runs the model, picks
the tensors each objective reads off the shared representation h and its heads, calls
these functions, and sums ``λ_i · L_i`` with λ from the loss-weight tuner. Every loss is
a scalar in float32 (inputs are upcast, so bf16 autocast is safe) and is 0 with a live
graph when its mask selects nothing. docs/objectives.md gives the formulas.

``lm``      next-token cross-entropy on text and code; padding targets are ``IGNORE``.
``vision``  MAE (mask ~75 % of patches, MSE on masked patches of per-patch-normalised
            pixels) + weight · symmetric InfoNCE between two augmented views.
            Patch layout (the corpus' ``image_patches``): (B, g·g, p·p·3), the g×g grid
            row-major, each patch row-major (p, p, 3), channel-last, pixels in [0, 1].
``align``   CLIP symmetric cross-entropy with a learnable log-scale (clamped ≤ log 100),
            or SigLIP's pairwise sigmoid loss; ``recall_at_1`` for evals.
``world``   regression of predicted next-chunk latents onto stop-gradient targets
            (V-JEPA style, targets from an EMA copy updated by ``ema_update``).
``embod``   flow matching on action chunks as in π0, with t = 1 at the data.

``representation_grad_norms`` measures ‖∂L_i/∂h‖ per objective for the tuner.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

IGNORE = -100

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP: temperature 0.07 at init
LOGIT_SCALE_MAX = math.log(100.0)  # CLIP: scale clipped at 100
SIGLIP_T_INIT = math.log(10.0)  # SigLIP: t' (log-scale) init
SIGLIP_B_INIT = -10.0  # SigLIP: bias init (most pairs are negatives)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), targets (B, T) with IGNORE for padding → mean CE over real tokens."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="mean"
    )


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries ``mask`` selects; 0 (graph kept) where none is.

    dim None: over everything, e.g. per-item errors (B, N) with mask (B, N) → scalar.
    dim 1: pool slots, e.g. x (B, n, D) with mask (B, n) → (B, D) (the mask broadcasts
    over x's trailing feature dimensions)."""
    if mask is None:
        return x.mean() if dim is None else x.mean(dim)
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m[..., None]
    if dim is None:
        return (x * m).sum() / m.sum().clamp_min(1.0)
    return (x * m).sum(dim) / m.sum(dim).clamp_min(1.0)


def _rand(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str | None
) -> torch.Tensor:
    """Uniform [0, 1) drawn on the generator's device (so a seed gives the same numbers
    wherever the result goes), then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


# ── vision ─────────────────────────────────────────────────────────────────────────────


def mae_mask(
    n_batch: int, n_patches: int, ratio: float = 0.75,
    generator: torch.Generator | None = None, device: torch.device | str | None = None,
) -> torch.Tensor:  # fmt: skip
    """(B, P) bool, True = masked (hidden from the encoder, reconstructed by the decoder).
    Exactly floor(ratio·P + 0.5) patches per row, chosen uniformly (MAE's random shuffle)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio: must lie in [0, 1], got {ratio}")
    k = int(math.floor(ratio * n_patches + 0.5))
    order = _rand((n_batch, n_patches), generator, device).argsort(dim=1)  # (B, P) random perm
    mask = torch.zeros(n_batch, n_patches, dtype=torch.bool, device=order.device)
    return mask.scatter_(1, order[:, :k], True)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, P, D) → each patch minus its mean over D, divided by sqrt(var + eps); var is
    the unbiased one, as in MAE's ``norm_pix_loss`` target."""
    x = patches.float()
    mean = x.mean(dim=-1, keepdim=True)  # (B, P, 1)
    var = x.var(dim=-1, keepdim=True)  # (B, P, 1)
    return (x - mean) / (var + eps).sqrt()


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pred, target (B, P, D), mask (B, P) bool → mean over masked patches of the per-patch
    MSE (mean over D). Visible patches do not count."""
    err = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, P)
    return masked_mean(err, mask)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """z1, z2 (B, E): embeddings of two views of the same B images (row i ↔ row i).
    Cosine logits s_ij = <ẑ1_i, ẑ2_j>/τ; loss = ½(CE(s, diag) + CE(sᵀ, diag)). Negatives
    are the other images of the other view (B−1 per row)."""
    a, b = F.normalize(z1.float(), dim=-1), F.normalize(z2.float(), dim=-1)
    logits = a @ b.T / temperature  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def _grid(patches: torch.Tensor) -> tuple[int, int]:
    """(g, p) of a (B, g·g, p·p·3) patch tensor."""
    n, d = patches.shape[-2:]
    g, p = math.isqrt(n), math.isqrt(d // 3)
    if g * g != n or p * p * 3 != d:
        raise ValueError(f"patches: expected (B, g*g, p*p*3), got {tuple(patches.shape)}")
    return g, p


def augment_patches(
    patches: torch.Tensor, generator: torch.Generator | None = None,
    brightness: float = 0.2, contrast: float = 0.2, flip_p: float = 0.5,
) -> torch.Tensor:  # fmt: skip
    """Second view for InfoNCE: per image, contrast c ~ U(1−contrast, 1+contrast) about the
    image mean, brightness shift b ~ U(−brightness, brightness), clamp to [0, 1], and with
    probability flip_p a horizontal flip. Layout (B, g·g, p·p·3), see the module docstring;
    a horizontal flip reverses the grid's columns and every patch's pixel columns.
    Deterministic given the generator (one (B, 3) draw)."""
    b, n, d = patches.shape
    g, p = _grid(patches)
    u = _rand((b, 3), generator, patches.device)  # (B, 3): contrast, brightness, flip
    c = (1.0 + contrast * (2 * u[:, 0] - 1))[:, None, None]  # (B, 1, 1)
    s = (brightness * (2 * u[:, 1] - 1))[:, None, None]
    x = patches.float()
    mean = x.mean(dim=(1, 2), keepdim=True)  # (B, 1, 1) image mean
    x = ((x - mean) * c + mean + s).clamp(0.0, 1.0)
    grid = x.view(b, g, g, p, p, 3)  # (B, row, col, y, x, C)
    flipped = grid.flip(2, 4).reshape(b, n, d)
    x = torch.where((u[:, 2] < flip_p)[:, None, None], flipped, x)
    return x.to(patches.dtype)


def vision_loss(
    pred: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor, z1: torch.Tensor,
    z2: torch.Tensor, *, contrastive_weight: float = 0.1, temperature: float = 0.1,
    norm_pix: bool = True,
) -> torch.Tensor:  # fmt: skip
    """MAE + contrastive_weight · InfoNCE. pred (B, P, D) decoder output over the full grid,
    patches (B, P, D) raw pixels, mask (B, P) (AND it with has_image[:, None] so text-only
    rows count nothing), z1, z2 (B', E) pooled embeddings of the two views of the image rows."""
    target = normalize_patches(patches) if norm_pix else patches
    return mae_loss(pred, target, mask) + contrastive_weight * info_nce(z1, z2, temperature)


# ── align ──────────────────────────────────────────────────────────────────────────────


def clip_loss(
    img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """img, txt (B, E) paired rows; logit_scale: the learnable log of the inverse
    temperature (init ``LOGIT_SCALE_INIT``), clamped to ≤ ``LOGIT_SCALE_MAX`` here (no
    gradient above the bound). Logits exp(s)·îtᵀ (B, B); ½(CE rows + CE columns)."""
    s = torch.as_tensor(logit_scale, dtype=torch.float32, device=img.device)
    scale = s.clamp(max=LOGIT_SCALE_MAX).exp()
    a, b = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    logits = scale * (a @ b.T)  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def siglip_loss(
    img: torch.Tensor, txt: torch.Tensor, t: torch.Tensor | float, b: torch.Tensor | float
) -> torch.Tensor:
    """SigLIP: −(1/B) Σ_ij log σ(z_ij (exp(t)·<î_i, t̂_j> + b)), z = +1 on the diagonal, −1
    elsewhere. ``t`` is the learnable log-scale t' (init ``SIGLIP_T_INIT``), ``b`` the
    learnable bias (init ``SIGLIP_B_INIT``)."""
    t = torch.as_tensor(t, dtype=torch.float32, device=img.device)
    b = torch.as_tensor(b, dtype=torch.float32, device=img.device)
    x, y = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    logits = t.exp() * (x @ y.T) + b  # (B, B)
    z = 2 * torch.eye(logits.shape[0], device=logits.device) - 1  # labels ±1
    return F.softplus(-z * logits).sum() / logits.shape[0]  # −log σ(x) = softplus(−x)


@torch.no_grad()
def recall_at_1(img: torch.Tensor, txt: torch.Tensor) -> float:
    """Image→text recall@1: fraction of rows i whose most similar text (cosine) is txt i."""
    sim = F.normalize(img.float(), dim=-1) @ F.normalize(txt.float(), dim=-1).T  # (B, B)
    hits = sim.argmax(dim=1) == torch.arange(sim.shape[0], device=sim.device)
    return float(hits.float().mean())


# ── world ──────────────────────────────────────────────────────────────────────────────


def world_loss(
    pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
    kind: str = "smooth_l1", beta: float = 1.0,
) -> torch.Tensor:  # fmt: skip
    """pred (B, C, E): latents of chunk c+1 predicted from chunk c and the learned
    null-action embedding (the caller builds the predictor's input; no real actions in
    pretraining video). target (B, C, E): the target encoder's latents of chunk c+1,
    detached here (stop-gradient). valid (B, C) bool: pairs that exist. Per-pair loss =
    mean over E of smooth-L1 (Huber, ``beta``) or squared error (``kind="l2"``)."""
    target = target.detach()
    if kind == "smooth_l1":
        err = F.smooth_l1_loss(pred.float(), target.float(), beta=beta, reduction="none")
    elif kind == "l2":
        err = (pred.float() - target.float()).pow(2)
    else:
        raise ValueError(f"kind: expected 'smooth_l1' or 'l2', got {kind!r}")
    return masked_mean(err.mean(dim=-1), valid)  # (B, C) → scalar


def next_chunk_pairs(
    online: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """online, target (B, C, E) latents of C chunks, valid (B, C) → (context (B, C−1, E)
    = online chunks 0..C−2, target (B, C−1, E) = detached target chunks 1..C−1,
    valid (B, C−1) = both chunks of the pair exist)."""
    return online[:, :-1], target[:, 1:].detach(), valid[:, :-1] & valid[:, 1:]


@torch.no_grad()
def ema_update(
    target_params: Iterable[torch.Tensor], online_params: Iterable[torch.Tensor], decay: float
) -> None:
    """In place: target ← decay·target + (1−decay)·online, pairwise over two equally long
    sequences of tensors (plain tensors, Parameters or DTensors with the same placements;
    ``lerp_`` is a pointwise op, so sharded tensors update shard by shard)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay: must lie in [0, 1], got {decay}")
    for t, o in zip(list(target_params), list(online_params), strict=True):
        t.lerp_(o if o.dtype == t.dtype else o.to(t.dtype), 1.0 - decay)


# ── embod ──────────────────────────────────────────────────────────────────────────────
# Convention: t = 0 is pure noise x0 ~ N(0, I), t = 1 is the data x1 (the action chunk);
# openpi's π0 code uses the reverse (t = 1 noise), so its time τ maps to t = 1 − τ.


def flow_matching_pair(
    x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x1 actions (B, T, A), x0 noise (B, T, A), t (B,) → (x_t = t·x1 + (1−t)·x0,
    v_target = x1 − x0), the linear (rectified-flow) path and its constant velocity."""
    tb = t.to(x1.dtype).view(-1, *([1] * (x1.dim() - 1)))  # (B, 1, 1)
    return tb * x1 + (1 - tb) * x0, x1 - x0


def flow_matching_loss(
    v_pred: torch.Tensor, v_target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """v_pred, v_target (B, T, A), valid (B, T) bool (padded steps False) → mean over
    valid steps of the squared error averaged over A."""
    err = (v_pred.float() - v_target.float()).pow(2).mean(dim=-1)  # (B, T)
    return masked_mean(err, valid)


def sample_t(
    n: int, generator: torch.Generator | None = None, dist: str = "pi0",
    device: torch.device | str | None = None,
) -> torch.Tensor:  # fmt: skip
    """(n,) flow times. ``"pi0"``: π0's τ = 0.999·s + 0.001, s ~ Beta(1.5, 1), mapped to
    t = 1 − τ = 0.999·(1 − s) ∈ [0, 0.999) (more weight on the noisy end, mean ≈ 0.40);
    s is drawn by inverse CDF, s = u^(1/1.5), so it follows the generator.
    ``"uniform"``: t ~ U[0, 1)."""
    u = _rand((n,), generator, device)
    if dist == "uniform":
        return u
    if dist == "pi0":
        return 0.999 * (1.0 - u.pow(1.0 / 1.5))
    raise ValueError(f"dist: expected 'pi0' or 'uniform', got {dist!r}")


@torch.no_grad()
def euler_sample(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
    steps: int = 10,
) -> torch.Tensor:  # fmt: skip
    """Integrate dx/dt = velocity_fn(x (B, T, A), t (B,)) from t = 0 (x0, noise) to t = 1
    with ``steps`` explicit Euler steps (π0 uses 10) → actions (B, T, A)."""
    if steps < 1:
        raise ValueError(f"steps: must be >= 1, got {steps}")
    x, dt = x0.clone(), 1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), i * dt, dtype=x.dtype, device=x.device)
        x = x + dt * velocity_fn(x, t)
    return x


# ── tuner input ────────────────────────────────────────────────────────────────────────


def representation_grad_norms(losses: dict[str, torch.Tensor], h: torch.Tensor) -> dict[str, float]:
    """{name: ‖∂L_name/∂h‖₂} for the unweighted losses at the shared representation h
    (B, S, D), the tuner's input (DESIGN decision 6). Backpropagates only through the heads
    (retain_graph, so the step's full backward still works afterwards). The norm is this
    rank's; under data parallelism the caller combines ranks (e.g. root-mean-square)."""
    out = {}
    for name, loss in losses.items():
        g = None
        if loss.requires_grad:
            (g,) = torch.autograd.grad(loss, h, retain_graph=True, allow_unused=True)
        if g is None:  # no path from h to this loss
            out[name] = 0.0
            continue
        n = torch.linalg.vector_norm(g.float())
        out[name] = float(n.full_tensor() if hasattr(n, "full_tensor") else n)
    return out
