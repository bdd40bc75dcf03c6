import hashlib
import json

import pytest

from ogi_ray.canonical import canonical_json, hash_canonical

# Expected strings: ECMAScript Number.prototype.toString, as listed in RFC 8785
# (JCS) appendix B and its test vectors.
VECTORS = [
    (0.0, "0"), (-0.0, "0"), (1.0, "1"), (4.5, "4.5"), (0.002, "0.002"),
    (1e-7, "1e-7"), (1e21, "1e+21"), (1e20, "100000000000000000000"),
    (333333333.3333333, "333333333.3333333"), (1e23, "1e+23"),
    (9007199254740992.0, "9007199254740992"), (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e+308"), (0.000001, "0.000001"),
    (-1.5e-7, "-1.5e-7"), (295147905179352830000.0, "295147905179352830000"),
]  # fmt: skip


@pytest.mark.parametrize("value,text", VECTORS)
def test_numbers_follow_ecmascript(value, text):
    assert canonical_json(value).decode() == text


def test_objects_sorted_compact_utf8():
    obj = {"b": [1, "é"], "a": {"z": None, "y": True}, "\u20ac": "x"}
    out = canonical_json(obj)
    assert out == '{"a":{"y":true,"z":null},"b":[1,"é"],"€":"x"}'.encode()
    assert hash_canonical(obj) == hashlib.sha256(out).hexdigest()
    # round trip through json keeps the canonical bytes
    assert canonical_json(json.loads(out)) == out


def test_rejects_nan_and_non_string_keys():
    with pytest.raises(ValueError):
        canonical_json(float("nan"))
    with pytest.raises(TypeError):
        canonical_json({1: "a"})
