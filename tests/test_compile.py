"""``device.compile``: torch.compile per block changes neither the numbers (beyond
fp32 reduction order) nor the parameter names that checkpoints and weight roots use."""

import copy

import torch
from test_schedule_model import _batch

from ogi_ray.model import build, preset
from ogi_ray.parallel.apply import compile_blocks


def test_compiled_blocks_match_eager_and_keep_state_dict_keys():
    cfg = preset("tiny", vocab_size=300, n_text=16, n_img=4, img_dim=12)
    torch.manual_seed(0)
    eager = build(cfg)
    compiled = compile_blocks(copy.deepcopy(eager))
    assert list(compiled.state_dict()) == list(eager.state_dict())
    batch = _batch(cfg)
    h_e, out_e = eager(batch)
    h_c, out_c = compiled(batch)
    assert torch.allclose(h_c, h_e, rtol=1e-5, atol=1e-5)
    # Gradients through the compiled blocks agree too.
    h_e.square().mean().backward()
    h_c.square().mean().backward()
    for (n, p_e), (_, p_c) in zip(eager.named_parameters(), compiled.named_parameters(), strict=True):
        if p_e.grad is not None:
            assert torch.allclose(p_c.grad, p_e.grad, rtol=1e-4, atol=1e-6), n
