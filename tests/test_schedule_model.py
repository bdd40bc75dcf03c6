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


def test_model_is_causal_and_image_conditioned():
    torch.manual_seed(0)
    model = build(preset("tiny", vocab_size=300)).eval()
    tok = torch.randint(0, 300, (2, 12))
    patches = torch.rand(2, 64, 192)
    has = torch.tensor([True, True])
    _, a = model(tok, patches, has)
    tok2 = tok.clone()
    tok2[:, 8] = (tok2[:, 8] + 1) % 300
    _, b = model(tok2, patches, has)
    # logits[:, t] sees tokens < t only: positions ≤ 8 unchanged, later ones change
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-5)
    assert not torch.allclose(a[:, 9:], b[:, 9:])
    _, c = model(tok, torch.rand(2, 64, 192), has)
    assert not torch.allclose(a[:, 0], c[:, 0])  # the image conditions the first token


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
