"""TP, PP and FSDP applied to the plain model, against a single process (gloo, CPU), and
sharded checkpoints that reshard between layouts.

Every distributed case spawns real gloo ranks with torch.multiprocessing
(``run_distributed``), builds the model on the meta device and materialises each rank's
shards (train/stepper.py), trains on the same rows with the same λ, and compares the
per-step losses, the global gradient norm, the weights and AdamW moments (read back from
the rank-written checkpoint shards, so the comparison also covers the checkpoint format)
and the Merkle root with one process running ``PlainStep`` over the same micro-batches.

Tolerance (fp32): TP splits the q/k/v/wo and MLP matmuls over ranks and sums partial
products in another order, FSDP averages gradients with a reduce-scatter, PP divides the
accumulated gradient by the micro-batch count after backward instead of scaling each loss
before it; all of these change rounding only (~1e-7 relative per op). Losses are compared
at 1e-5 relative, weights after AdamW steps at 1e-5 absolute (weights are ~0.02; AdamW's
first steps move each element by ≈ lr·sign(g), so a gradient element at the rounding
level could flip; none did). docs/parallel_apply.md records what was observed.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch
from _dist import run_distributed

from ogi_ray.lineage.merkle import weights_root
from ogi_ray.model import build, preset
from ogi_ray.parallel.dims import ParallelDims, dp_rank_and_size
from ogi_ray.parallel.pipeline import batch_keys, build_stage, stage_layers
from ogi_ray.storage import Store

STEPS = 3
ROWS = 2  # rows per chunk; a step's global batch is 4 chunks (8 rows)
CHUNKS = 4
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def _cfg():
    c = preset("tiny", vocab_size=300, n_text=16, n_img=4, img_dim=48, n_vid=8, vid_group=4,
               vid_dim=96, n_steps=2, prop_dim=4, act_dim=4)  # fmt: skip
    return replace(c, n_layers=4)  # the preset fixes n_layers: override after


def _chunk(cfg, step, i):
    """One chunk of ROWS rows (all five objectives present), deterministic in (step, i)."""
    g = torch.Generator().manual_seed(1000 * step + i)
    lay, b = cfg.layout, ROWS
    valid = torch.ones(b, lay.n_text, dtype=torch.bool)
    valid[1, 12:] = False  # some padding
    tokens = torch.randint(1, cfg.vocab_size, (b, lay.n_text), generator=g).masked_fill(~valid, 0)
    # Row 0 packs two documents (block-diagonal text attention, on every pipeline stage);
    # row 1 is one document and its padding.
    text_doc = torch.tensor([[0] * 7 + [1] * 9, [0] * 12 + [1] * 4])
    act = torch.randn(b, lay.n_steps, cfg.act_dim, generator=g)
    noise = torch.randn(b, lay.n_steps, cfg.act_dim, generator=g)
    t = torch.rand(b, generator=g)
    return {
        "tokens": tokens, "text_valid": valid, "text_doc": text_doc, "n_tokens": torch.tensor(int(valid.sum())),
        "img": torch.rand(b, lay.n_img, cfg.img_dim, generator=g),
        "img2": torch.rand(b, lay.n_img, cfg.img_dim, generator=g),
        "img_present": torch.ones(b, lay.n_img, dtype=torch.bool),
        "mae_mask": torch.rand(b, lay.n_img, generator=g) < 0.75,
        "vid": torch.rand(b, lay.n_vid, cfg.vid_dim, generator=g),
        "vid_present": torch.ones(b, lay.n_vid, dtype=torch.bool),
        "prop": torch.rand(b, lay.n_steps, cfg.prop_dim, generator=g),
        "act": act, "act_dims": torch.ones(b, cfg.act_dim, dtype=torch.bool),
        "step_present": torch.ones(b, lay.n_steps, dtype=torch.bool),
        "flow_t": t, "act_xt": t[:, None, None] * act + (1 - t[:, None, None]) * noise,
        "act_v": act - noise,
    }  # fmt: skip


LAMBDAS = {"lm": 1.0, "vision": 0.7, "align": 1.3, "world": 0.5, "embod": 1.1}


def _optim(model):
    from ogi_ray.train.optim import OptimConfig, build_optimizer

    return build_optimizer(model, OptimConfig(lr=1e-3, min_lr=1e-4), total_steps=10)


def _fresh(cfg):
    from ogi_ray.train.step import make_world_target

    return build(cfg, seed=0), make_world_target(cfg, 0, torch.device("cpu"))


def _plan(dims, **kw):
    """The ParallelPlan of a test case: CHUNKS // dp micro-batches of ROWS rows per dp
    rank (so every layout trains on the same 4 chunks a step), plus the case's fields."""
    from ogi_ray.parallel.plan import ParallelPlan

    dp, tp, pp = dims
    return ParallelPlan(**{"dp": dp, "tp": tp, "pp": pp, "microbatches": CHUNKS // dp, "micro_batch_rows": ROWS,
                           "reshard_after_forward": pp == 1, **kw})  # fmt: skip


def _stepper(cfg, plan, compile=False, seed=0):
    from ogi_ray.train.stepper import build_stepper

    return build_stepper(cfg, plan, _placement(), seed=seed, compile=compile, grad_clip=1.0)


def _built(st) -> dict:
    """What the runtime built for the plan's fields, read off the modules themselves."""
    from ogi_ray.parallel.apply import _blocks

    block = _blocks(st.module)[0]
    norm_w = block.attn_norm.weight
    fsdp = getattr(block, "_get_fsdp_state", None)
    group = fsdp()._fsdp_param_group if fsdp else None
    return {
        "ac": getattr(block, "ogi_activation_checkpoint", "none"),
        # SequenceParallel makes the norms TP DTensors: a 2-D (dp, tp) mesh under FSDP.
        "sp": getattr(norm_w, "device_mesh", None) is not None and norm_w.device_mesh.ndim == 2,
        "reshard_after_forward": bool(group._reshard_after_forward) if group else None,
        "microbatches": st.n_microbatches or st.plan.microbatches,
    }


def _logical(folder: str) -> dict:
    """name → full tensor of a sharded checkpoint folder, assembled by the torch-free
    reader (lineage/shards.py): what a verifier sees."""
    import numpy as np

    from ogi_ray.lineage.shards import assemble, shard_index

    store = Store(folder)
    np_dt = {"F32": np.float32, "F64": np.float64, "BF16": np.uint16, "I64": np.int64}
    out = {}
    for name, t in shard_index(store).items():
        arr = np.frombuffer(assemble(store, t).tobytes(), dtype=np_dt[t.dtype]).reshape(t.shape)
        out[name] = torch.from_numpy(arr.copy())
    return out


def _placement():
    from ogi_ray.parallel.device import DeviceConfig, resolve

    return resolve(DeviceConfig(device="cpu", precision="fp32"))


# ── the single-process reference ──────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def reference():
    """Losses, norms and weights of one process: PlainStep over the step's 4 chunks."""
    from ogi_ray.train.step import PlainStep

    torch.set_num_threads(1)
    cfg = _cfg()
    model, wt = _fresh(cfg)
    root0 = weights_root(model.state_dict())
    opt, sched = _optim(model)
    step_fn = PlainStep(model, cfg, _placement(), grad_clip=1.0)
    metrics = []
    for step in range(STEPS):
        micro = [_chunk(cfg, step, i) for i in range(CHUNKS)]
        metrics.append(step_fn.train(opt, sched, micro, lambdas=LAMBDAS, world_target=wt))
    evals = step_fn.evaluate({"held": _chunk(cfg, 99, 0)}, wt)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    return {"metrics": metrics, "root0": root0, "state": state, "evals": evals, "optim": osd}


def _train_rank(rank, world, dims_t, plan_kw, compile, save_dir):
    """One rank: meta model → the plan's layout → its shards only (``compile``:
    torch.compile per block), STEPS steps on its dp slice, then a sharded checkpoint
    into ``save_dir``."""
    from ogi_ray.lineage.merkle import merkle_root
    from ogi_ray.lineage.sharded import sharded_weights_leaves
    from ogi_ray.train import checkpoint as ckpt
    from ogi_ray.train.heldout import heldout_scores
    from ogi_ray.train.step import make_world_target

    cfg = _cfg()
    st = _stepper(cfg, _plan(dims_t, **plan_kw), compile)
    dp_rank, dp = dp_rank_and_size(st.mesh)
    wt = make_world_target(cfg, 0, torch.device("cpu"))
    root0 = merkle_root([leaf for _, leaf in sharded_weights_leaves(ckpt.model_state(st.module))])
    opt, sched = _optim(st.module)
    t0 = time.perf_counter()
    metrics = []
    per = CHUNKS // dp  # this dp rank's chunks of the step's global batch
    for step in range(STEPS):
        micro = [_chunk(cfg, step, i) for i in range(dp_rank * per, (dp_rank + 1) * per)]
        metrics.append(st.step.train(opt, sched, micro, lambdas=LAMBDAS, world_target=wt))
    seconds = (time.perf_counter() - t0) / STEPS
    evals = st.step.evaluate({"held": _chunk(cfg, 99, 0)}, wt)
    # The trainer's checkpoint scores: 3 sources dealt over the dp ranks (one rank pads
    # with a throw-away forward at dp 2), against every source evaluated on every rank.
    held = {f"src{i}": _chunk(cfg, 98, i) for i in range(3)}
    split = heldout_scores(st.step, held, wt, dp_rank=dp_rank, dp=dp, split=st.n_microbatches == 0)
    whole = st.step.evaluate(held, wt)
    saved = ckpt.save(Store(save_dir), st.module, opt, sched, train_state={"step": STEPS}, world_target=wt)
    return {"metrics": metrics, "root0": root0, "root": saved.root, "dp_rank": dp_rank, "dp": dp,
            "evals": evals, "seconds_per_step": seconds, "files": saved.files, "built": _built(st),
            "split_scores": list(split.items()), "whole_scores": list(whole.items())}  # fmt: skip


def _optim_state_by_name(osd) -> dict:
    """The single-process optimizer state as the checkpoint's flat tensor names."""
    return {f"{p}.{k}": v for p, st in osd["state"].items() for k, v in st.items()}


def _check(results, ref, name, save_dir):
    """Compare with the reference; returns the largest differences (for the docs)."""
    dp = results[0]["dp"]
    worst = {"loss_rel": 0.0, "grad_norm_rel": 0.0, "weight_abs": 0.0}
    for step in range(STEPS):
        want = ref["metrics"][step]
        for key, value in want.items():
            if not key.startswith(("loss/", "gradnorm_raw/")) and key != "grad_norm":
                continue
            if key.startswith("gradnorm_raw/"):  # first micro-batch = chunk 0: dp rank 0
                got = [r["metrics"][step][key] for r in results if r["dp_rank"] == 0]
            else:  # the worker's mean over dp ranks (every rank of a replica agrees)
                got = [sum(r["metrics"][step][key] for r in results if r["dp_rank"] == d) /
                       sum(1 for r in results if r["dp_rank"] == d) for d in range(dp)]  # fmt: skip
                got = [sum(got) / dp] if key.startswith("loss/") else got
            for g in got:
                rel = abs(g - value) / max(abs(value), 1e-12)
                worst["grad_norm_rel" if key == "grad_norm" else "loss_rel"] = max(
                    worst["grad_norm_rel" if key == "grad_norm" else "loss_rel"], rel)
                assert rel <= LOSS_RTOL, f"{name} step {step} {key}: {g} vs {value} (rel {rel:.2e})"
    # Every rank materialised only its shards from the per-tensor init rule: the root of
    # the initial weights is the single process' (no rank ever held the full model).
    assert {r["root0"] for r in results} == {ref["root0"]}, f"{name}: Merkle root at step 0 differs"
    state = _logical(f"{save_dir}/model")  # assembled from the rank-written shards
    assert sorted(state) == sorted(ref["state"]), f"{name}: checkpoint tensor names differ"
    assert weights_root(state) == results[0]["root"], f"{name}: shards' root differs from the sharded hash"
    for k, v in ref["state"].items():
        diff = float((state[k] - v).abs().max())
        worst["weight_abs"] = max(worst["weight_abs"], diff)
        assert diff <= WEIGHT_ATOL, f"{name}: {k} differs by {diff:.2e} after {STEPS} steps"
    for k, v in ref["evals"].items():
        got = results[-1]["evals"][k]
        assert got == pytest.approx(v, rel=LOSS_RTOL), f"{name}: eval {k} {got} vs {v}"
    files = set(results[0]["files"])
    assert {f"model/shard-{r + 1:05d}-model-00001-of-00001.safetensors" for r in range(len(results))} >= {
        f for f in files if f.startswith("model/")}, f"{name}: one weights shard per rank at most"
    _check_optim(_logical(f"{save_dir}/optim"), _optim_state_by_name(ref["optim"]), name, worst)
    worst["seconds_per_step"] = max(r["seconds_per_step"] for r in results)
    print(f"\n{name}: {worst}")
    return worst


def _check_optim(got, want, name, worst):
    """AdamW moments and step counts as the checkpoint stores them: same names, close
    values (relative to each tensor's largest element: moments of tiny gradients are noise)."""
    assert sorted(got) == sorted(want), f"{name}: optimizer state names differ"
    worst["optim_rel"] = 0.0
    for k, v in want.items():
        diff = float((got[k].float().reshape(v.shape) - v.float()).abs().max())
        rel = diff / max(float(v.float().abs().max()), 1e-30)
        worst["optim_rel"] = max(worst["optim_rel"], rel)
        assert rel <= 1e-4, f"{name}: optimizer {k} differs by {rel:.2e} (relative)"


# ── cases ─────────────────────────────────────────────────────────────────────────────


SP = {"sequence_parallel": True}
KEEP = {"reshard_after_forward": False}


@pytest.mark.parametrize(
    "name,dims,plan_kw,compile",
    [
        ("tp2", (1, 2, 1), {}, False),
        ("pp2", (1, 1, 2), {}, False),
        ("dp2", (2, 1, 1), {}, False),
        ("dp2xtp2", (2, 2, 1), {}, False),
        # Each plan field the planner scores, built by the runtime and still training the
        # same model: sequence parallelism, activation checkpointing, the reshard mode.
        ("tp2+sp", (1, 2, 1), SP, False),
        ("dp2+selective-ac+keep-gathered", (2, 1, 1), {"activation_checkpoint": "selective", **KEEP}, False),
        pytest.param("dp2xtp2+sp+full-ac", (2, 2, 1), {**SP, "activation_checkpoint": "full"}, False,
                     marks=pytest.mark.slow),
        pytest.param("tp2xpp2+sp", (1, 2, 2), SP, False, marks=pytest.mark.slow),
        # device.compile on pipeline stages: each stage compiles only its own blocks.
        pytest.param("pp2+compile", (1, 1, 2), {}, True, marks=pytest.mark.slow),
        pytest.param("dp2xpp2", (2, 1, 2), {}, False, marks=pytest.mark.slow),
        pytest.param("dp2xtp2xpp2", (2, 2, 2), {}, False, marks=pytest.mark.slow),
    ],
)
def test_layout_matches_single_process(reference, name, dims, plan_kw, compile, tmp_path):
    world = dims[0] * dims[1] * dims[2]
    results = run_distributed(_train_rank, world, dims, plan_kw, compile, str(tmp_path / "ckpt"), timeout=900.0)
    _check(results, reference, name, str(tmp_path / "ckpt"))
    plan = _plan(dims, **plan_kw)
    for r in results:  # what each rank built is what the plan says
        assert r["built"]["ac"] == plan.activation_checkpoint
        assert r["built"]["sp"] == plan.sequence_parallel
        assert r["built"]["reshard_after_forward"] == plan.reshard_after_forward
        assert r["built"]["microbatches"] == plan.microbatches
        # Held-out scores split over dp: the same bits, keys and order as all on one rank.
        assert r["split_scores"] == r["whole_scores"] and len(r["whole_scores"]) >= 3


# ── sharded checkpoints reshard ───────────────────────────────────────────────────────


def _load_rank(rank, world, dims_t, src, dst):
    """Load the checkpoint ``src`` into this layout (built on the meta device, shards
    uninitialised), report the root and re-save into ``dst``."""
    from ogi_ray.lineage.merkle import merkle_root
    from ogi_ray.lineage.sharded import sharded_weights_leaves
    from ogi_ray.train import checkpoint as ckpt
    from ogi_ray.train.step import make_world_target

    cfg = _cfg()
    st = _stepper(cfg, _plan(dims_t), seed=None)
    opt, sched = _optim(st.module)
    wt = make_world_target(cfg, 0, torch.device("cpu"))
    state = ckpt.load(Store(src), st.module, opt, sched, wt)
    root = merkle_root([leaf for _, leaf in sharded_weights_leaves(ckpt.model_state(st.module))])
    ckpt.save(Store(dst), st.module, opt, sched, train_state=state, world_target=wt)
    return {"root": root, "lr": opt.param_groups[0]["lr"], "epoch": sched.last_epoch}


@pytest.fixture(scope="module")
def dp2_checkpoint(tmp_path_factory):
    src = str(tmp_path_factory.mktemp("dp2") / "ckpt")
    results = run_distributed(_train_rank, 2, (2, 1, 1), {}, False, src)
    return src, results[0]["root"]


@pytest.mark.parametrize("dims", [(1, 1, 1), (4, 1, 1), (1, 2, 1)], ids=["to-1", "to-dp4", "to-dp1xtp2"])
def test_dp2_checkpoint_loads_in_other_layouts(dp2_checkpoint, dims, tmp_path):
    """Saved at dp=2, loaded at 1 worker, 4 workers and dp1×tp2: the same weights root,
    and the optimizer state and schedule survive (re-saved bit for bit)."""
    src, root = dp2_checkpoint
    dst = str(tmp_path / "again")
    world = dims[0] * dims[1] * dims[2]
    if world == 1:
        results = [_load_rank(0, 1, dims, src, dst)]  # one process: no process group at all
    else:
        results = run_distributed(_load_rank, world, dims, src, dst)
    assert {r["root"] for r in results} == {root}
    assert {r["epoch"] for r in results} == {STEPS}
    before, after = _logical(f"{src}/optim"), _logical(f"{dst}/optim")
    assert sorted(before) == sorted(after)
    for k in before:
        assert torch.equal(before[k], after[k]), f"optimizer {k} changed through the reshard"
    assert weights_root(_logical(f"{dst}/model")) == root


# ── pieces without process groups ──────────────────────────────────────────────────────


def test_parallel_dims_validate():
    assert ParallelDims(2, 2, 2).world_size == 8
    ParallelDims(2, 1, 3).validate(6)
    with pytest.raises(ValueError, match="world size 4"):
        ParallelDims(2, 2, 2).validate(4)
    with pytest.raises(ValueError, match="tp"):
        ParallelDims(1, 0, 1)
    assert ParallelDims.from_plan({"dp": 2, "tp": 1, "pp": 4}) == ParallelDims(2, 1, 4)
    assert dp_rank_and_size(None) == (0, 1)


def test_stage_layers_contiguous_first_stages_take_extra():
    assert [list(stage_layers(7, r, 3)) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [len(stage_layers(4, r, 4)) for r in range(4)] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="at least as many layers"):
        stage_layers(2, 0, 3)


def test_tp_rejects_split_heads():
    from ogi_ray.parallel.apply import check_tp

    check_tp(_cfg(), 4)
    with pytest.raises(ValueError, match="n_heads 4"):
        check_tp(_cfg(), 3)


def test_meta_build_materialises_the_single_process_weights():
    """The model built on the meta device and materialised from the per-tensor rule
    equals the directly built one (the bare loop, replay and evals build that way)."""
    cfg = _cfg()
    st = _stepper(cfg, _plan((1, 1, 1)), seed=3)
    assert weights_root(st.module.state_dict()) == weights_root(build(cfg, seed=3).state_dict())
    assert weights_root(build(cfg, seed=3).state_dict()) != weights_root(build(cfg, seed=4).state_dict())
    assert torch.equal(st.module.attn_mask, cfg.layout.mask())  # buffers recomputed after to_empty


def test_stages_partition_the_model_and_compose_to_its_forward():
    cfg = _cfg()
    model, _ = _fresh(cfg)
    stages = [build_stage(model, r, 3, torch.device("cpu")) for r in range(3)]
    names = [set(s.state_dict()) for s in stages]
    assert set().union(*names) == set(model.state_dict())
    assert sum(len(n) for n in names) == len(model.state_dict())  # disjoint
    assert "tok_embed.weight" in names[0] and "lm_head.weight" in names[2]
    assert "layers.0.attn.wq.weight" in names[0] and "layers.3.mlp.w2.weight" in names[2]
    batch = _chunk(cfg, 0, 0)
    keys = batch_keys(batch)
    stages[0].input_keys = keys
    doc = {"text_doc": batch["text_doc"]}  # every stage cuts attention at the same boundaries
    with torch.no_grad():
        h, out = model(batch)
        x = stages[1](stages[0](*(batch[k] for k in keys), **doc), **doc)
        h2, *heads = stages[2](x, **doc)
    assert torch.equal(h, h2)
    assert list(stages[2].head_keys) == list(out)
    for k, v in zip(stages[2].head_keys, heads, strict=True):
        assert torch.equal(out[k], v)
