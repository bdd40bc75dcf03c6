"""Cost of the lineage: weight-hash throughput.

    python benchmarks/lineage_hashing.py [--presets small base] [--repeat 3]

The Merkle weight hash (merkle.tensor_leaves + merkle_root) over a preset's state dict
against one raw hashlib.sha256 over the same bytes, in the same run; also the verifier's
path (leaves from the safetensors bytes). Best of ``--repeat``. The training time lost to
checkpoints (sharded save, hashing while writing, the record) is measured by
benchmarks/checkpoint_io.py.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import torch

from ogi_ray.lineage.merkle import leaves_from_safetensors, merkle_root, tensor_leaves
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="*", default=["small", "base"])
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    for name in a.presets:
        throughput(name, a.repeat)


if __name__ == "__main__":
    main()
