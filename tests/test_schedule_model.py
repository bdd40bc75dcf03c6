import math

import pytest
import torch

from ogi_ray.model import build, preset
from ogi_ray.model.objectives import IGNORE, lm_loss
from ogi_ray.train.optim import OptimConfig, build_optimizer, param_groups
from ogi_ray.train.schedule import lr_at, warmup_steps


def test_lr_schedule_matches_the_formula():
    total, hi, lo = 200, 1e-3, 1e-4
    w = warmup_steps(total, 0.02)
    assert w == 4  # 2 % of 200
    kw = dict(total_steps=total, max_lr=hi, min_lr=lo, warmup_frac=0.02)
    assert lr_at(0, **kw) == pytest.approx(hi / 4)
    assert lr_at(w - 1, **kw) == pytest.approx(hi)
    assert lr_at(w, **kw) == pytest.approx(hi)  # cosine starts at the peak
    mid = w + (total - w - 1) / 2
    assert lr_at(int(mid), **kw) == pytest.approx(
        lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * (int(mid) - w) / (total - w - 1))))
    assert lr_at(total - 1, **kw) == pytest.approx(lo)
    seq = [lr_at(s, **kw) for s in range(w, total)]
    assert all(a >= b for a, b in zip(seq, seq[1:], strict=False))


def test_scheduler_drives_optimizer():
    model = build(preset("tiny", vocab_size=300))
    opt, sched = build_optimizer(model, OptimConfig(lr=1e-3, min_lr=1e-4), total_steps=50)
    seen = []
    for _ in range(50):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(1e-3)  # 1 warm-up step at 2 % of 50
    assert seen[-1] == pytest.approx(1e-4)


def test_no_weight_decay_on_norms_biases_embeddings():
    model = build(preset("tiny", vocab_size=300))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() == 2 and "embed" not in names[id(p)] for p in decay["params"])
    assert any("tok_embed" in names[id(p)] for p in no_decay["params"])
    assert any("norm" in names[id(p)] for p in no_decay["params"])


FULL = dict(vocab_size=300, n_text=12, n_img=16, img_dim=48, n_vid=8, vid_group=4, vid_dim=96,
            n_aud=4, aud_dim=40, n_steps=5, prop_dim=4, act_dim=4)


def _batch(cfg, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    lay = cfg.layout
    return {
        "tokens": torch.randint(0, cfg.vocab_size, (b, lay.n_text), generator=g),
        "img": torch.rand(b, lay.n_img, cfg.img_dim, generator=g),
        "img2": torch.rand(b, lay.n_img, cfg.img_dim, generator=g),
        "img_present": torch.ones(b, lay.n_img, dtype=torch.bool),
        "mae_mask": torch.rand(b, lay.n_img, generator=g) < 0.75,
        "vid": torch.rand(b, lay.n_vid, cfg.vid_dim, generator=g),
        "vid_present": torch.ones(b, lay.n_vid, dtype=torch.bool),
        "aud": torch.rand(b, lay.n_aud, cfg.aud_dim, generator=g),
        "aud_present": torch.ones(b, lay.n_aud, dtype=torch.bool),
        "prop": torch.rand(b, lay.n_steps, cfg.prop_dim, generator=g),
        "act_xt": torch.rand(b, lay.n_steps, cfg.act_dim, generator=g),
        "flow_t": torch.rand(b, generator=g),
        "step_present": torch.ones(b, lay.n_steps, dtype=torch.bool),
    }


def test_layout_mask_rules():
    from ogi_ray.model.layout import Layout

    lay = Layout(n_img=2, n_vid=4, vid_group=2, n_aud=1, n_steps=2, n_text=3)
    m, sl = lay.mask(), lay.slices()
    assert m.shape == (lay.seq_len, lay.seq_len) == (2 + 2 + 4 + 1 + 2 + 2 + 3,) * 2
    t, v, a, i = sl["txt"], sl["vid"], sl["act"], sl["img"]
    assert not m[t, i].any() and not m[t, v].any()  # text never sees images or video
    assert m[t, t].equal(torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    # video chunk 0 (slots 0-1) cannot see chunk 1 (slots 2-3); chunk 1 sees chunk 0
    vv = m[v, v]
    assert not vv[:2, 2:].any() and vv[2:, :2].all()
    assert m[a, v].all() and m[a, sl["prop"]].all() and not m[sl["prop"], a].any()


def test_model_heads_shapes_and_text_causality():
    torch.manual_seed(0)
    cfg = preset("tiny", **FULL)
    assert cfg.objectives == ["lm", "vision", "align", "world", "embod"]
    model = build(cfg).eval()
    b = _batch(cfg)
    h, out = model(b)
    assert h.shape == (2, cfg.layout.seq_len, cfg.dim)
    assert out["lm_logits"].shape == (2, 12, 300)
    assert out["mae_pred"].shape == (2, 16, 48)
    assert out["world_pred"].shape == (2, 1, cfg.dim)  # 2 chunks → 1 prediction
    assert out["act_v"].shape == (2, 5, 4)
    b2 = dict(b)
    b2["tokens"] = b["tokens"].clone()
    b2["tokens"][:, 8] = (b2["tokens"][:, 8] + 1) % 300
    _, out2 = model(b2)
    # text slot t sees tokens ≤ t only
    assert torch.allclose(out["lm_logits"][:, :8], out2["lm_logits"][:, :8], atol=1e-5)
    assert not torch.allclose(out["lm_logits"][:, 8:], out2["lm_logits"][:, 8:])
    # changing the image leaves text logits alone (no leak into the caption latent) …
    b3 = dict(b, img2=torch.rand(2, 16, 48))
    _, out3 = model(b3)
    assert torch.allclose(out["lm_logits"], out3["lm_logits"], atol=1e-5)
    # … but changes the image latents
    assert not torch.allclose(out["img_lat"], out3["img_lat"])


def test_absent_segments_have_no_parameters():
    cfg = preset("tiny", vocab_size=300, n_img=4)
    model = build(cfg)
    assert model.vid_embed is None and model.embod_head is None
    assert cfg.objectives == ["lm", "vision", "align"]


def test_lm_loss_ignores_padding_and_matches_uniform():
    v = 50
    logits = torch.zeros(2, 4, v)
    targets = torch.tensor([[1, 2, IGNORE, IGNORE], [3, IGNORE, IGNORE, IGNORE]])
    assert lm_loss(logits, targets).item() == pytest.approx(math.log(v))
    logits[0, 2:] = 100.0  # garbage at padded positions must not matter
    assert lm_loss(logits, targets).item() == pytest.approx(math.log(v))


def test_presets_report_size():
    for name in ("tiny", "small", "base"):
        m = build(preset(name))
        assert m.num_params() > m.num_params(include_embeddings=False) > 0
        assert m.flops_per_token() > 6 * m.num_params(include_embeddings=False)
    assert build(preset("small")).num_params() > 4 * build(preset("tiny")).num_params()
