import hashlib
import json

import pytest
import torch
from safetensors.torch import save_file

from ogi_ray.lineage.merkle import (
    leaf_hash,
    leaves_from_safetensors,
    merkle_proof,
    merkle_root,
    tensor_leaves,
    verify_proof,
    weights_root,
)
from ogi_ray.lineage.record import RecordError, read_head
from ogi_ray.lineage.registry import LineageRegistry


def test_merkle_root_by_hand():
    # Three leaves: root = H(1 ‖ H(1 ‖ l0 ‖ l1) ‖ l2), the odd leaf carried up.
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(3)]
    n01 = hashlib.sha256(b"\x01" + leaves[0] + leaves[1]).digest()
    expect = hashlib.sha256(b"\x01" + n01 + leaves[2]).hexdigest()
    assert merkle_root(leaves) == expect
    for i in range(3):
        assert verify_proof(leaves[i], merkle_proof(leaves, i), expect)
    assert not verify_proof(leaves[0], merkle_proof(leaves, 1), expect)


def test_leaf_encoding_by_hand():
    t = torch.tensor([[1.0, -2.0]], dtype=torch.float32)
    expect = hashlib.sha256(
        b"\x00w\x00F32\x001,2\x00" + b"\x00\x00\x80\x3f" + b"\x00\x00\x00\xc0"
    ).digest()
    assert tensor_leaves({"w": t}) == [("w", expect)]
    assert leaf_hash("w", "F32", (1, 2), t.numpy().tobytes()) == expect


def test_safetensors_file_matches_memory_and_detects_flip(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {"b.weight": torch.randn(4, 3, generator=g), "a.bias": torch.randn(5, generator=g),
             "c": torch.randn(2, 2, generator=g).to(torch.bfloat16)}
    path = tmp_path / "m.safetensors"
    save_file(state, str(path))
    from_file = merkle_root([leaf for _, leaf in leaves_from_safetensors(path)])
    assert from_file == weights_root(state)
    raw = bytearray(path.read_bytes())
    raw[len(raw) - 5] ^= 0x10
    path.write_bytes(bytes(raw))
    assert merkle_root([leaf for _, leaf in leaves_from_safetensors(path)]) != from_file


def _fields(step, parent):
    return {"run": "r", "step": step, "parent": parent, "checkpoint": f"step_{step:06d}",
            "weights_root": "ab" * 32, "weights_hash": "sha256-merkle-v1",
            "weights_file": "model.safetensors", "manifest_hash": "cd" * 32,
            "config_hash": "ef" * 32, "data_cursor": {"batches_seen": step}, "rng": "00" * 32,
            "eval": {"lm": 1.25}}


def test_registry_chain_idempotent_and_no_fork(tmp_path):
    reg = LineageRegistry(str(tmp_path))
    h1 = reg.append(_fields(1, ""))
    assert reg.append(_fields(1, "")) == h1  # retried append: same record
    assert len(list((tmp_path / "records").glob("*.json"))) == 1
    h2 = reg.append(_fields(2, h1))
    with pytest.raises(RecordError):
        reg.append(_fields(3, h1))  # parent is not the head
    with pytest.raises(RecordError):
        reg.append(_fields(2, ""))  # a second start
    # A restarted registry reloads the head from storage.
    assert LineageRegistry(str(tmp_path)).get_head() == h2 == read_head(tmp_path)
    rec = json.loads((tmp_path / "records" / f"{h2}.json").read_text())
    assert rec["eval"] == {"lm": "1.250000"}  # floats stored as decimal strings
    assert rec["parent"] == h1


def _standalone():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "verify_lineage_standalone.py"
    spec = importlib.util.spec_from_file_location("verify_lineage_standalone", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_standalone_canonical_json_agrees_with_the_package():
    import random
    import struct

    from ogi_ray.canonical import canonical_json

    sa = _standalone()
    known = {4.0: "4", 21239.0: "21239", 0.05: "0.05", 1e-5: "0.00001", 1e-8: "1e-8",
             1.5e21: "1.5e+21", 1e21: "1e+21", 1e20: "100000000000000000000", -0.5: "-0.5",
             123.456: "123.456", 5e-324: "5e-324", 0.1 + 0.2: "0.30000000000000004"}
    for x, s in known.items():
        assert sa.number(x) == s
    rng = random.Random(0)
    for _ in range(3000):  # random doubles of every magnitude, both implementations
        x = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if x == x and abs(x) != float("inf"):
            assert sa.cbytes([x]) == canonical_json([x]), x
    obj = {"b": [1, "é\n\u0001"], "a": {"z": None, "y": True}, "\u00e9": 0.25}
    assert sa.cbytes(obj) == canonical_json(obj) == '{"a":{"y":true,"z":null},"b":[1,"é\\n\\u0001"],"é":0.25}'.encode()
