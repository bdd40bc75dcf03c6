"""Cost of the lineage: weight-hash throughput, and the training time lost to checkpoints.

    python benchmarks/lineage_hashing.py [--presets small base] [--ckpt-preset small]

1. Throughput. The Merkle weight hash (merkle.tensor_leaves + merkle_root) over a preset's
   state dict against one raw hashlib.sha256 over the same bytes, in the same run; also
   the verifier's path (leaves from the safetensors bytes). Best of ``--repeat``.
2. Checkpoint stall, in-process (no Ray, one rank). A training step of the ``--ckpt-preset``
   model is timed; then what the worker does at a checkpoint: train.checkpoint.save
   (gather + leaves + safetensors + optim.pt + train_state.json) + lineage.checkpoint_files
   + make_record + LineageRegistry.append. The stall is reported per checkpoint and as a
   share of the ``--every`` steps between checkpoints (the default interval, 10).
   Then torch.distributed.checkpoint.async_save: the time it blocks (staging a CPU copy)
   against its total, with the lineage hash of the staged copy done in the background.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import threading
import time
from pathlib import Path

import torch

from ogi_ray.lineage.merkle import leaves_from_safetensors, merkle_root, tensor_leaves
from ogi_ray.lineage.record import checkpoint_files, make_record
from ogi_ray.lineage.registry import LineageRegistry
from ogi_ray.model import MultimodalTransformer, preset


def _best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def throughput(name, repeat):
    torch.manual_seed(0)
    state = {k: v.detach().contiguous() for k, v in MultimodalTransformer(preset(name)).state_dict().items()}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    buffers = [t.view(-1).view(torch.uint8).numpy() for t in state.values()]

    def raw():
        h = hashlib.sha256()
        for b in buffers:
            h.update(b)
        return h.hexdigest()

    t_raw, _ = _best(raw, repeat)
    t_merkle, root = _best(lambda: merkle_root([x for _, x in tensor_leaves(state)]), repeat)
    with tempfile.TemporaryDirectory() as d:
        from safetensors.torch import save_file

        save_file(state, f"{d}/m.safetensors")
        data = Path(f"{d}/m.safetensors").read_bytes()
        t_file, root_file = _best(lambda: merkle_root([x for _, x in leaves_from_safetensors(data)]), repeat)
    assert root_file == root
    gb = nbytes / 1e9
    print(f"[{name}] {len(state)} tensors, {gb * 1e3:.1f} MB: raw sha256 {gb / t_raw:.2f} GB/s | "
          f"merkle (tensors) {gb / t_merkle:.2f} GB/s, ratio {t_raw / t_merkle:.3f} | "
          f"merkle (safetensors bytes) {gb / t_file:.2f} GB/s, ratio {t_raw / t_file:.3f}")  # fmt: skip
    return {"preset": name, "mb": gb * 1e3, "raw": gb / t_raw, "merkle": gb / t_merkle, "file": gb / t_file}


def _batch(cfg, b=8):
    """A text-only batch for the plain model (forward takes the collated dict)."""
    g = torch.Generator().manual_seed(1)
    n = cfg.layout.n_text
    return {"tokens": torch.randint(0, cfg.vocab_size, (b, n), generator=g),
            "text_valid": torch.ones(b, n, dtype=torch.bool), "n_tokens": torch.tensor(b * n)}  # fmt: skip


def _step(model, opt, sched, batch):
    # A synthetic loss through every head and the backbone: the cost of forward, backward
    # and AdamW is what matters here, not the objectives' values.
    h, heads = model(batch)
    loss = h.float().pow(2).mean() + sum(v.float().pow(2).mean() for v in heads.values() if torch.is_tensor(v))
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def stall(name, steps, every, device):
    from ogi_ray.train import checkpoint as ckpt
    from ogi_ray.train.optim import OptimConfig, build_optimizer

    torch.manual_seed(0)
    cfg = preset(name)
    model = MultimodalTransformer(cfg).to(device)
    opt, sched = build_optimizer(model, OptimConfig(), 1000)
    batch = {k: v.to(device) for k, v in _batch(cfg).items()}
    _step(model, opt, sched, batch)  # warm-up (allocations, AdamW state)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        _step(model, opt, sched, batch)
    _sync(device)
    t_step = (time.perf_counter() - t0) / steps

    with tempfile.TemporaryDirectory() as d:
        reg = LineageRegistry(f"{d}/lineage")
        t0 = time.perf_counter()
        ck = Path(d) / "step_000010"
        root = ckpt.save(ck, model, opt, sched, {"step": 10}, 0)
        t_save = time.perf_counter() - t0
        files = checkpoint_files(ck)
        t_files = time.perf_counter() - t0 - t_save
        fields = {"run": "bench", "step": 10, "parent": "", "checkpoint": ck.name, "weights_root": root,
                  "weights_hash": "sha256-merkle-v1", "weights_file": "model.safetensors",
                  "manifest_hash": "0" * 64, "config_hash": "0" * 64, "data_cursor": {"rows": 80},
                  "rng": "0" * 64, "eval": {"lm": 1.0}, "files": files}  # fmt: skip
        make_record(**fields)
        reg.append(fields)
        t_sync = time.perf_counter() - t0
        size = sum((ck / f).stat().st_size for f in files) / 1e6
    print(f"[{name} on {device}] step {t_step * 1e3:.1f} ms; sync checkpoint {t_sync * 1e3:.0f} ms "
          f"(save+leaves {t_save * 1e3:.0f}, file hashes {t_files * 1e3:.0f}, record+append "
          f"{(t_sync - t_save - t_files) * 1e3:.0f}) for {size:.1f} MB = {t_sync / t_step:.2f} steps; "
          f"stall at every={every}: {100 * t_sync / (every * t_step + t_sync):.1f}% of training time")  # fmt: skip
    out = {"step_ms": t_step * 1e3, "sync_ms": t_sync * 1e3, "mb": size}
    out.update(_async(model, opt, batch, sched, t_step, device))
    return out


def _async(model, opt, batch, sched, t_step, device):
    import torch.distributed.checkpoint as dcp

    with tempfile.TemporaryDirectory() as d:
        state = {"model": model.state_dict(), "optim": opt.state_dict()}
        t0 = time.perf_counter()
        fut = dcp.async_save(state, checkpoint_id=f"{d}/dcp", no_dist=True)
        t_block = time.perf_counter() - t0
        # Lineage on a private copy in the background as well (what a non-blocking worker
        # would do: hash the staged weights, not the live ones training keeps updating).
        staged = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        t_copy = time.perf_counter() - t0 - t_block
        result = {}
        th = threading.Thread(target=lambda: result.setdefault("root", merkle_root([x for _, x in tensor_leaves(staged)])))
        th.start()
        t1 = time.perf_counter()
        _step(model, opt, sched, batch)  # training goes on meanwhile
        _sync(device)
        t_overlap_step = time.perf_counter() - t1
        fut.result()
        th.join()
        t_total = time.perf_counter() - t0
    print(f"    dcp.async_save: blocks {t_block * 1e3:.0f} ms + staged copy for hashing {t_copy * 1e3:.0f} ms "
          f"(= {(t_block + t_copy) / t_step:.2f} steps), done after {t_total * 1e3:.0f} ms; a step "
          f"overlapping the background write took {t_overlap_step * 1e3:.0f} ms ({t_overlap_step / t_step:.2f}x)")  # fmt: skip
    return {"async_block_ms": (t_block + t_copy) * 1e3, "async_total_ms": t_total * 1e3,
            "overlap_step_ms": t_overlap_step * 1e3}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="*", default=["small", "base"])
    p.add_argument("--ckpt-preset", default="small")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--every", type=int, default=10, help="steps between checkpoints (LoopConfig default)")
    p.add_argument("--device", default="cpu", help="device of the checkpoint-stall model (cpu, cuda)")
    a = p.parse_args(argv)
    for name in a.presets:
        throughput(name, a.repeat)
    if a.ckpt_preset:
        stall(a.ckpt_preset, a.steps, a.every, torch.device(a.device))


if __name__ == "__main__":
    main()
