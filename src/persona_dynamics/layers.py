"""One layer vocabulary for every stage: which residual-stream blocks a spec names.

A spec is a list of zero-based block indices, `"middle"` (block L // 2, the paper's lead layer),
`"all"`, or text: comma-separated indices and end-exclusive ranges (`"3,7,11"`, `"46:54"`,
`"0:4,10"`). `check` validates a spec without a model (for configs and flags); `resolve` turns it
into sorted, distinct indices of an L-block model.
"""

from __future__ import annotations

from persona_dynamics.errors import PersonaDynamicsError

Spec = list[int] | str
WORDS = ("middle", "all")
EXPECTED = "expected 'middle', 'all', or indices and end-exclusive ranges, e.g. 3,7,11 or 46:54"


def middle(n_layers: int) -> int:
    """The middle block of an L-block model: L // 2."""
    return n_layers // 2


def _error(key: str, spec: Spec, text: str) -> PersonaDynamicsError:
    shown = f"'{spec}'" if isinstance(spec, str) else str(spec)
    return PersonaDynamicsError(f"{key} {shown}: {text}" if key else f"{shown}: {text}")


def _parse(spec: Spec, key: str) -> list[int] | str:
    """A spec's indices (unsorted, maybe out of range) or one of WORDS; bad text is an error."""
    if isinstance(spec, str) and spec.strip() in WORDS:
        return spec.strip()
    found = spec
    if isinstance(spec, str):
        found = []
        for item in spec.split(","):
            lo, colon, hi = item.strip().partition(":")
            try:
                a, b = int(lo), int(hi) if colon else int(lo) + 1
            except ValueError:
                raise _error(key, spec, EXPECTED) from None
            if b <= a:
                raise _error(key, spec, f"the range {item.strip()} is empty")
            found += range(a, b)
    if any(i < 0 for i in found):
        raise _error(key, spec, "layer indices are zero-based and non-negative")
    return list(found)


def check(spec: Spec, key: str = "") -> Spec:
    """The spec itself when it is well formed; otherwise an error naming `key` (when given)."""
    _parse(spec, key)
    return spec


def resolve(spec: Spec, n_layers: int, key: str = "") -> list[int]:
    """The sorted, distinct block indices a spec names in an L-block model; out of range refused."""
    found = _parse(spec, key)
    if found == "middle":
        return [middle(n_layers)]
    if found == "all":
        return list(range(n_layers))
    bad = sorted({i for i in found if i >= n_layers})
    if bad:
        where = f"{key}: " if key else ""
        raise PersonaDynamicsError(
            f"{where}{bad} out of range for a {n_layers}-layer model (0..{n_layers - 1})"
        )
    return sorted(set(found))
