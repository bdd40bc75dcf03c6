"""Optional ed25519 signatures over record hashes (needs the ``cryptography`` package).

    message   = b"ogi-lineage-record-v1:" + record_hash as 64 lowercase hex ASCII
    signature = Ed25519(private key, message): 64 bytes
    stored    = lineage/signatures/<record_hash>.sig, the signature as 128 lowercase hex
                digits and a newline

The prefix keeps a lineage signature from being valid for anything else the same key
signs. Signing the head record alone would cover the chain (each record names its
parent's hash), but every record is signed so an intermediate checkpoint can be shown
on its own. Keys are PEM files: PKCS#8 private, SubjectPublicKeyInfo public.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ogi_ray.lineage.record import read_head, read_record
from ogi_ray.storage import Store

PREFIX = b"ogi-lineage-record-v1:"


def message(record_hash: str) -> bytes:
    return PREFIX + record_hash.encode("ascii")


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("lineage signing needs the 'cryptography' package") from e
    return serialization, ed25519


def generate_keypair(private_pem: str | Path, public_pem: str | Path) -> None:
    """Write a new ed25519 key pair as PEM files (the private one readable by owner only)."""
    serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    Path(private_pem).write_bytes(priv)
    Path(private_pem).chmod(0o600)
    Path(public_pem).write_bytes(pub)


def _chain(ldir: Store) -> list[str]:
    out, h = [], read_head(ldir)
    while h:
        out.append(h)
        h = read_record(ldir, h)["parent"]
    return out


def sign_run(lineage_dir: str | Path | Store, private_pem: str | Path) -> list[str]:
    """Sign every record on the chain that has no signature yet; returns the hashes signed."""
    serialization, ed25519 = _crypto()
    key = serialization.load_pem_private_key(Path(private_pem).read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{private_pem}: not an ed25519 private key")
    ldir = lineage_dir if isinstance(lineage_dir, Store) else Store(lineage_dir)
    signed = []
    for h in _chain(ldir):
        if not ldir.is_file(f"signatures/{h}.sig"):
            ldir.write_atomic(f"signatures/{h}.sig", (key.sign(message(h)).hex() + "\n").encode())
            signed.append(h)
    return signed


def verify_signatures(ldir: Store, hashes: list[str], public_pem: str | Path) -> list[str]:
    """Problems with the signatures of ``hashes`` (every one must be present and valid)."""
    from cryptography.exceptions import InvalidSignature

    serialization, ed25519 = _crypto()
    pub = serialization.load_pem_public_key(Path(public_pem).read_bytes())
    if not isinstance(pub, ed25519.Ed25519PublicKey):
        return [f"{public_pem}: not an ed25519 public key"]
    problems = []
    for h in hashes:
        rel = f"signatures/{h}.sig"
        if not ldir.is_file(rel):
            problems.append(f"{ldir.path(rel)}: record {h[:12]} is not signed")
            continue
        raw = ldir.read_bytes(rel)
        try:
            sig = bytes.fromhex(raw.decode("ascii").removesuffix("\n"))
            if raw != (sig.hex() + "\n").encode() or len(sig) != 64:
                raise ValueError("not 128 lowercase hex digits and a newline")
            pub.verify(sig, message(h))
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f"{ldir.path(rel)}: malformed signature ({e})")
        except InvalidSignature:
            problems.append(f"{ldir.path(rel)}: signature does not verify with {public_pem}")
    return problems
