"""Canonical JSON (RFC 8785 / JCS subset) and the hashes built on it.

Used by the corpus manifest and the lineage records, so that a verifier in any language
can reproduce the exact bytes that were hashed:

* objects: keys sorted by UTF-16 code units (equal to code-point order for the ASCII keys
  we use), no whitespace, ``,`` and ``:`` separators;
* strings: UTF-8, JSON escapes only for ``"``, ``\\``, and control characters
  (``ensure_ascii=False``), which is what JCS prescribes;
* integers as decimal digits; floats as ECMAScript ``Number.prototype.toString`` prints
  them (shortest round-trip digits; integral values < 1e21 without a fraction, exponent
  form ``1e-7`` / ``1.5e+21`` outside [1e-6, 1e21)); NaN and infinity are rejected.

Lineage records avoid floats altogether (scores are decimal strings); the manifest
contains shares and token counts, which this module writes the JCS way.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any


def _es_number(x: float) -> str:
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"canonical JSON cannot encode {x!r}")
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 2**53:
        return str(int(x))
    # repr gives the shortest round-trip digits; re-lay them out the ECMAScript way.
    sign = "-" if x < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    int_part, _, frac = mantissa.partition(".")
    digits = (int_part + frac).lstrip("0")
    # n: position of the decimal point relative to the digit string (ES "n").
    n = len(int_part.lstrip("0")) + (int(exp) if exp else 0)
    if not int_part.lstrip("0"):  # 0.000123 → digits "123", n counts the zeros
        n = -(len(frac) - len(frac.lstrip("0"))) + (int(exp) if exp else 0)
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    head = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{head}e{'+' if e >= 0 else '-'}{abs(e)}"


def _encode(obj: Any) -> str:
    if type(obj).__module__ == "numpy" and hasattr(obj, "item"):
        obj = obj.item()  # numpy scalars (np.float64 reprs as "np.float64(...)")
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, float):
        return _es_number(obj)
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, list | tuple):
        return "[" + ",".join(_encode(v) for v in obj) + "]"
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"canonical JSON object keys must be strings, got {k!r}")
        items = sorted(obj.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + _encode(v) for k, v in items) + "}"
    raise TypeError(f"canonical JSON cannot encode {type(obj).__name__}")


def canonical_json(obj: Any) -> bytes:
    """The canonical UTF-8 bytes of ``obj`` (see module docstring)."""
    return _encode(obj).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_canonical(obj: Any) -> str:
    """SHA-256 hex of the canonical JSON of ``obj``."""
    return sha256_hex(canonical_json(obj))


def stream_sha256(f: Any, chunk: int = 1 << 22) -> str:
    """SHA-256 hex of everything left in the readable binary stream ``f``."""
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


def file_sha256(path: Any) -> str:
    """SHA-256 hex of a local file (URIs: ``ogi_ray.storage.Store.sha256``)."""
    with open(path, "rb") as f:
        return stream_sha256(f)
