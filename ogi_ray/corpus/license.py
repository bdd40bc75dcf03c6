"""License gate: SPDX expressions of sources checked against a policy file.

The policy (``datasets/policy.yaml``) lists ``allowed`` and ``denied`` SPDX license ids.
A source's ``license`` is an SPDX expression parsed by ``license-expression`` against
the SPDX license list (aliases such as ``GPL-2.0+`` are normalised to their canonical
keys). The expression is evaluated as logic: ``A AND B`` needs both licenses usable,
``A OR B`` needs either; a license is usable when it is allowed and not denied.

Two levels, one evaluation:

* a source's ``license``: validated when the mixture loads (not valid SPDX is a
  ConfigError at ``sources[i].license``); a valid expression the policy denies excludes
  the source (``gate_sources``), and the manifest lists it with the reason;
* a row's license (a source's ``license_field``, as Common Pile and The Stack v2 filter
  per document): ``row_verdict`` in the Ray workers, cached per distinct expression; a
  missing, unparsable or denied row never reaches a shard and is counted per reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from ogi_ray.config import ConfigError, from_dict, load_yaml


@dataclass(kw_only=True)
class LicensePolicy:
    name: str = "default"
    allowed: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for key in ("allowed", "denied"):
            for expr in getattr(self, key):
                errors = _licensing().validate(expr).errors
                if errors:
                    raise ValueError(f"{key}: {expr!r}: {'; '.join(errors)}")


@cache
def _licensing() -> Any:
    from license_expression import get_spdx_licensing

    return get_spdx_licensing()


def spdx_error(expression: str) -> str | None:
    """The SPDX parser's message when ``expression`` is not a valid expression, else None."""
    errors = _licensing().validate(expression).errors
    return "; ".join(errors) if errors else None


def _key(expr: str) -> str:
    return str(_licensing().parse(expr))


def load_policy(path: str | Path) -> LicensePolicy:
    return from_dict(LicensePolicy, load_yaml(path), file=path)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str
    normalized: str | None


def check_license(expression: str | None, policy: LicensePolicy) -> Verdict:
    """Evaluate one source's SPDX expression against ``policy``."""
    if expression is None or not str(expression).strip():
        return Verdict(False, "missing license: every source needs an SPDX expression", None)
    lic = _licensing()
    info = lic.validate(expression)
    if info.errors:
        return Verdict(False, f"invalid SPDX expression {expression!r}: {'; '.join(info.errors)}", None)
    parsed = lic.parse(expression)
    allowed = {_key(x) for x in policy.allowed}
    denied = {_key(x) for x in policy.denied}
    problems: list[str] = []

    def usable(node: Any) -> bool:
        from license_expression import AND, OR

        if isinstance(node, AND):
            return all([usable(a) for a in node.args])  # list: collect every problem
        if isinstance(node, OR):
            return any([usable(a) for a in node.args])
        key = str(node)
        if key in denied:
            problems.append(f"{key} is denied by policy {policy.name!r}")
            return False
        if key not in allowed:
            problems.append(f"{key} is not in the allowed list of policy {policy.name!r}")
            return False
        return True

    ok = usable(parsed)
    reason = "allowed" if ok else "; ".join(problems)
    return Verdict(ok, reason, str(parsed))


def gate_sources(
    sources: list[Any], policy: LicensePolicy, *, file: str | Path | None = None, strict: bool = False
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Split sources into (included, excluded records). ``strict`` turns exclusion into error."""
    included, excluded = [], []
    for i, s in enumerate(sources):
        v = check_license(s.license, policy)
        if v.allowed:
            included.append(s)
        else:
            if strict:
                raise ConfigError(file, f"sources[{i}].license", v.reason)
            excluded.append({"name": s.name, "license": s.license or "", "reason": v.reason})
    return included, excluded


@cache
def _row_verdict(expression: str, allowed: tuple[str, ...], denied: tuple[str, ...], name: str) -> str | None:
    v = check_license(expression, LicensePolicy(name=name, allowed=list(allowed), denied=list(denied)))
    if v.allowed:
        return None
    if v.normalized is None:
        return "missing license" if not str(expression).strip() else "invalid SPDX expression"
    return v.reason


def row_verdict(expression: str | None, policy: LicensePolicy) -> str | None:
    """None when a row's license is usable under ``policy``, else the exclusion reason
    (a bounded set: "missing license", "invalid SPDX expression", or the policy verdict)."""
    if expression is None or not str(expression).strip():
        return "missing license"
    return _row_verdict(str(expression), tuple(policy.allowed), tuple(policy.denied), policy.name)
