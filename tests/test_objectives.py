"""The five objectives against values derived independently (closed forms, numpy, or
plain loops), plus their conventions: masks, layouts, stop-gradients, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ogi_ray.model import objectives as obj


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ── lm ─────────────────────────────────────────────────────────────────────────────────


def test_lm_loss_ignores_padding_and_matches_hand_ce():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # softmax → p(2) = 3/6
    targets = torch.tensor([[2, 1, obj.IGNORE]])
    expected = (-math.log(3 / 6) - math.log(1 / 4)) / 2
    assert obj.lm_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


# ── vision ─────────────────────────────────────────────────────────────────────────────


def test_mae_mask_exact_count_random_and_deterministic():
    m = obj.mae_mask(16, 64, 0.75, gen(1))
    assert m.shape == (16, 64) and m.dtype == torch.bool
    assert (m.sum(1) == 48).all()
    assert len({tuple(r.tolist()) for r in m}) == 16  # rows differ
    assert torch.equal(m, obj.mae_mask(16, 64, 0.75, gen(1)))
    assert not torch.equal(m, obj.mae_mask(16, 64, 0.75, gen(2)))
    assert (obj.mae_mask(3, 10, 0.75, gen(0)).sum(1) == 8).all()  # 7.5 rounds half up
    assert obj.mae_mask(2, 5, 0.0, gen(0)).sum() == 0
    with pytest.raises(ValueError, match="ratio"):
        obj.mae_mask(2, 5, 1.5)


def test_normalize_patches_matches_numpy():
    x = torch.rand(2, 4, 12, generator=gen(3))
    a = x.numpy().astype(np.float64)
    ref = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(obj.normalize_patches(x).numpy(), ref, rtol=1e-5, atol=1e-5)
    flat = obj.normalize_patches(torch.full((1, 1, 6), 0.5))  # constant patch: no NaN
    assert torch.isfinite(flat).all() and flat.abs().max() == 0


def test_mae_loss_zero_on_perfect_and_masked_only():
    target = torch.rand(2, 4, 3, generator=gen(4))
    mask = torch.tensor([[True, False, False, True], [False, False, True, False]])
    assert obj.mae_loss(target, target, mask).item() == 0.0
    pred = target.clone()
    pred[0, 0] += 1.0  # masked: per-patch MSE 1
    pred[0, 3] += 2.0  # masked: per-patch MSE 4
    pred[1, 2, 0] += 3.0  # masked: per-patch MSE 9/3 = 3
    pred[0, 1] += 100.0  # visible: must not count
    assert obj.mae_loss(pred, target, mask).item() == pytest.approx((1 + 4 + 3) / 3, rel=1e-6)
    p = pred.requires_grad_()
    empty = obj.mae_loss(p, target, torch.zeros(2, 4, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0.0 and p.grad.abs().sum() == 0


def test_info_nce_identical_orthogonal_closed_form():
    b, tau = 4, 0.5
    z = torch.eye(b) * 3.0  # orthogonal; scale must not matter (cosine)
    # every row: positive logit 1/τ, B−1 negatives at 0 → CE = log(e^{1/τ} + B − 1) − 1/τ
    expected = math.log(math.exp(1 / tau) + b - 1) - 1 / tau
    assert obj.info_nce(z, z, tau).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_symmetric_and_matches_loop():
    z1, z2 = torch.randn(5, 8, generator=gen(5)), torch.randn(5, 8, generator=gen(6))
    a = z1 / z1.norm(dim=1, keepdim=True)
    c = z2 / z2.norm(dim=1, keepdim=True)
    s = (a @ c.T / 0.2).double()
    rows = [-(s[i, i] - torch.logsumexp(s[i], 0)) for i in range(5)]
    cols = [-(s[i, i] - torch.logsumexp(s[:, i], 0)) for i in range(5)]
    expected = 0.5 * (sum(rows) / 5 + sum(cols) / 5)
    assert obj.info_nce(z1, z2, 0.2).item() == pytest.approx(float(expected), rel=1e-5)
    assert obj.info_nce(z2, z1, 0.2).item() == pytest.approx(float(expected), rel=1e-5)


def _patchify(im: np.ndarray, p: int) -> np.ndarray:
    """The corpus layout: (H, W, 3) → (g·g, p·p·3), row-major grid, row-major patch."""
    g = im.shape[0] // p
    return im.reshape(g, p, g, p, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, p * p * 3)


def test_augment_patches_flip_is_image_flip_and_deterministic():
    rng = np.random.default_rng(0)
    ims = rng.random((6, 8, 8, 3)).astype(np.float32)  # g = 4, p = 2
    patches = torch.from_numpy(np.stack([_patchify(im, 2) for im in ims]))  # (6, 16, 12)
    flipped = obj.augment_patches(patches, gen(7), brightness=0.0, contrast=0.0, flip_p=1.0)
    ref = np.stack([_patchify(im[:, ::-1].copy(), 2) for im in ims])
    np.testing.assert_allclose(flipped.numpy(), ref, atol=1e-7)
    same = obj.augment_patches(patches, gen(7), brightness=0.0, contrast=0.0, flip_p=0.0)
    assert torch.allclose(same, patches, atol=1e-6)
    a1 = obj.augment_patches(patches, gen(8))
    assert torch.equal(a1, obj.augment_patches(patches, gen(8)))
    assert not torch.equal(a1, obj.augment_patches(patches, gen(9)))
    assert a1.shape == patches.shape and a1.min() >= 0 and a1.max() <= 1
    with pytest.raises(ValueError, match="patches"):
        obj.augment_patches(torch.rand(1, 15, 12))


def test_augment_patches_brightness_shift():
    x = torch.full((2, 4, 12), 0.5)
    y = obj.augment_patches(x, gen(0), brightness=0.2, contrast=0.0, flip_p=0.0)
    shift = y[:, 0, 0] - 0.5  # one shift per image, uniform in [−0.2, 0.2]
    assert torch.allclose(y, 0.5 + shift[:, None, None]) and shift.abs().max() <= 0.2


def test_vision_loss_is_mae_plus_weighted_infonce():
    patches = torch.rand(3, 16, 12, generator=gen(10))
    pred = torch.randn(3, 16, 12, generator=gen(11))
    mask = obj.mae_mask(3, 16, 0.75, gen(12))
    z1, z2 = torch.randn(3, 8, generator=gen(13)), torch.randn(3, 8, generator=gen(14))
    got = obj.vision_loss(pred, patches, mask, z1, z2, contrastive_weight=0.3, temperature=0.2)
    want = obj.mae_loss(pred, obj.normalize_patches(patches), mask) + 0.3 * obj.info_nce(
        z1, z2, 0.2
    )
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    perfect = obj.vision_loss(
        obj.normalize_patches(patches), patches, mask, z1, z2, contrastive_weight=0.0
    )
    assert perfect.item() == pytest.approx(0.0, abs=1e-7)


# ── align ──────────────────────────────────────────────────────────────────────────────


def test_clip_loss_closed_form_and_scale_clamp():
    b = 3
    e = torch.eye(b)
    s = math.log(2.0)
    expected = math.log(math.exp(2.0) + b - 1) - 2.0  # positive logit 2, negatives 0
    assert obj.clip_loss(e, e, s).item() == pytest.approx(expected, rel=1e-5)
    big = torch.tensor(math.log(1000.0), requires_grad=True)  # clamped to scale 100
    loss = obj.clip_loss(e + 0.1, e, big)
    assert loss.item() == pytest.approx(
        obj.clip_loss(e + 0.1, e, obj.LOGIT_SCALE_MAX).item(), rel=1e-6
    )
    loss.backward()
    assert big.grad.item() == 0.0  # above the bound the scale gets no gradient
    s_param = torch.tensor(obj.LOGIT_SCALE_INIT, requires_grad=True)
    obj.clip_loss(
        torch.randn(4, 8, generator=gen(15)), torch.randn(4, 8, generator=gen(16)), s_param
    ).backward()
    assert s_param.grad is not None and s_param.grad.item() != 0.0  # learnable


def test_siglip_loss_matches_loop():
    img, txt = torch.randn(4, 6, generator=gen(17)), torch.randn(4, 6, generator=gen(18))
    t, b = obj.SIGLIP_T_INIT, obj.SIGLIP_B_INIT
    x = img / img.norm(dim=1, keepdim=True)
    y = txt / txt.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(4):
        for j in range(4):
            z = 1.0 if i == j else -1.0
            logit = math.exp(t) * float(x[i] @ y[j]) + b
            total += -math.log(1 / (1 + math.exp(-z * logit)))
    assert obj.siglip_loss(img, txt, t, b).item() == pytest.approx(total / 4, rel=1e-5)


def test_recall_at_1():
    e = torch.eye(4)
    assert obj.recall_at_1(e, e) == 1.0
    assert obj.recall_at_1(e, e[[1, 0, 2, 3]]) == 0.5


# ── world ──────────────────────────────────────────────────────────────────────────────


def test_world_loss_masked_and_stop_gradient():
    pred = torch.zeros(2, 3, 4, requires_grad=True)
    target = torch.zeros(2, 3, 4, requires_grad=True)
    with torch.no_grad():
        target[0, 0] = 0.5  # smooth-L1 (β=1): 0.5·0.25 = 0.125 per element
        target[1, 2] = 3.0  # |d| ≥ β: 3 − 0.5 = 2.5 per element
        target[0, 1] = 100.0  # invalid pair: ignored
    valid = torch.tensor([[True, False, True], [True, True, True]])
    loss = obj.world_loss(pred, target, valid)
    assert loss.item() == pytest.approx((0.125 + 2.5) / 5, rel=1e-6)
    loss.backward()
    assert target.grad is None and pred.grad is not None  # stop-gradient on targets
    l2 = obj.world_loss(pred, target, valid, kind="l2")
    assert l2.item() == pytest.approx((0.25 + 9.0) / 5, rel=1e-6)


def test_next_chunk_pairs_shift():
    lat = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    ctx, tgt, v = obj.next_chunk_pairs(lat, lat * 10, valid)
    assert torch.equal(ctx[:, :, 0], lat[:, :3, 0]) and torch.equal(
        tgt[:, :, 0], 10 * lat[:, 1:, 0]
    )
    assert v.tolist() == [[True, True, False], [True, True, True]]


def test_ema_update_in_place_on_parameters():
    online = [
        torch.nn.Parameter(torch.full((3,), 1.0)),
        torch.nn.Parameter(torch.full((2, 2), -2.0)),
    ]
    target = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    ptrs = [t.data_ptr() for t in target]
    obj.ema_update(target, online, 0.9)
    assert torch.allclose(target[0], torch.full((3,), 0.1)) and torch.allclose(
        target[1], torch.full((2, 2), -0.2)
    )
    assert [t.data_ptr() for t in target] == ptrs and not target[0].grad
    obj.ema_update(target, online, 0.0)
    assert torch.equal(target[0], online[0])
    with pytest.raises(ValueError):
        obj.ema_update(target, online[:1], 0.5)


def test_ema_update_on_dtensors():
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    if dist.is_initialized():
        pytest.skip("a process group is already active in this process")
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        t = distribute_tensor(torch.zeros(4, 2), mesh, [Shard(0)])
        o = distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)])
        obj.ema_update([t], [o], 0.75)
        assert torch.allclose(t.full_tensor(), torch.full((4, 2), 0.25))
    finally:
        dist.destroy_process_group()


# ── embod ──────────────────────────────────────────────────────────────────────────────


def test_flow_matching_pair_endpoints_and_velocity():
    x1, x0 = torch.randn(3, 5, 2, generator=gen(19)), torch.randn(3, 5, 2, generator=gen(20))
    xt, v = obj.flow_matching_pair(x1, x0, torch.tensor([0.0, 1.0, 0.25]))
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], x1[1])  # t=0 noise, t=1 data
    assert torch.allclose(xt[2], 0.25 * x1[2] + 0.75 * x0[2]) and torch.equal(v, x1 - x0)


def test_flow_matching_loss_masked():
    v_t = torch.zeros(2, 3, 2)
    v_p = torch.zeros(2, 3, 2)
    v_p[0, 0] = torch.tensor([1.0, 3.0])  # MSE over A: 5
    v_p[1, 2] = 50.0  # padded step
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert obj.flow_matching_loss(v_p, v_t, valid).item() == pytest.approx(5 / 5)
    assert obj.flow_matching_loss(v_p, v_t).item() == pytest.approx((5 + 2500) / 6)


def test_sample_t_pi0_beta_and_uniform():
    t = obj.sample_t(200_000, gen(21))
    assert torch.equal(t, obj.sample_t(200_000, gen(21)))
    assert t.min() >= 0 and t.max() < 0.999
    # t = 0.999·(1 − s), s ~ Beta(1.5, 1): E[t] = 0.999·(1 − 0.6), P(t ≤ 0.999·x) = 1 − (1 − x)^1.5
    assert t.mean().item() == pytest.approx(0.999 * 0.4, abs=3e-3)
    for x in (0.1, 0.5, 0.9):
        frac = (t <= 0.999 * x).float().mean().item()
        assert frac == pytest.approx(1 - (1 - x) ** 1.5, abs=5e-3)
    u = obj.sample_t(100_000, gen(22), dist="uniform")
    assert u.mean().item() == pytest.approx(0.5, abs=5e-3)
    with pytest.raises(ValueError):
        obj.sample_t(3, dist="beta")


def test_euler_recovers_target_from_exact_conditional_velocity():
    x1 = torch.randn(2, 6, 3, generator=gen(23))
    x0 = torch.randn(2, 6, 3, generator=gen(24))

    def v_cond(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (x1 - x) / (1 - t)[:, None, None]  # velocity towards x1 along the straight path

    for steps in (1, 10):
        assert torch.allclose(obj.euler_sample(v_cond, x0, steps), x1, atol=1e-5)
    const = obj.euler_sample(lambda x, t: x1 - x0, x0, steps=7)  # the pair's own velocity
    assert torch.allclose(const, x1, atol=1e-5)


def test_flow_matching_true_velocity_beats_zero_on_gaussian_toy():
    # data x1 ~ N(μ, σ²), noise x0 ~ N(0, 1); x_t = t x1 + (1−t) x0 is Gaussian, so the
    # marginal velocity E[x1 − x0 | x_t] = μ + Cov(x1 − x0, x_t)/Var(x_t) · (x_t − tμ)
    mu, sigma, n = 2.0, 0.5, 20_000
    x1 = mu + sigma * torch.randn(n, 1, 1, generator=gen(25))
    x0 = torch.randn(n, 1, 1, generator=gen(26))
    t = obj.sample_t(n, gen(27))
    xt, v = obj.flow_matching_pair(x1, x0, t)
    tb = t[:, None, None]
    cov = tb * sigma**2 - (1 - tb)
    var = tb**2 * sigma**2 + (1 - tb) ** 2
    v_true = mu + cov / var * (xt - tb * mu)
    l_true = obj.flow_matching_loss(v_true, v).item()
    l_zero = obj.flow_matching_loss(torch.zeros_like(v), v).item()
    assert l_zero == pytest.approx(mu**2 + sigma**2 + 1, rel=0.05)
    assert l_true < 0.5 * l_zero
    # and sampling with the true velocity lands on the data distribution
    out = obj.euler_sample(lambda x, s: mu + (s[:, None, None] * sigma**2 - (1 - s[:, None, None]))
                           / (s[:, None, None] ** 2 * sigma**2 + (1 - s[:, None, None]) ** 2)
                           * (x - s[:, None, None] * mu), x0, steps=50)  # fmt: skip
    assert out.mean().item() == pytest.approx(mu, abs=0.05)
    assert out.std().item() == pytest.approx(sigma, abs=0.05)


# ── tuner input ────────────────────────────────────────────────────────────────────────


def test_representation_grad_norms_match_hand_gradients():
    h = torch.randn(2, 3, 4, generator=gen(28), requires_grad=True)
    w = torch.randn(4, generator=gen(29))
    losses = {"a": (h * w).sum(), "b": 0.5 * h.pow(2).sum(), "c": w.sum()}  # c: no path to h
    norms = obj.representation_grad_norms(losses, h)
    # ∂a/∂h = w broadcast over (2, 3); ∂b/∂h = h
    assert norms["a"] == pytest.approx(math.sqrt(6) * w.norm().item(), rel=1e-5)
    assert norms["b"] == pytest.approx(h.norm().item(), rel=1e-5)
    assert norms["c"] == 0.0
    (losses["a"] + losses["b"]).backward()  # graph still usable for the step's backward
    assert h.grad is not None
