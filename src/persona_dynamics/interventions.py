"""Interventions on the residual stream as data, and their math: no models, no files.

An `Intervention` says what to do to the output of chosen decoder blocks (docs/definitions.md's
layer rule): add c·v, ablate v (set the projection on v̂ to 0), mean-ablate (set it to a reference
value), or cap it (a ceiling or a floor at τ). Projections are in raw units of the uncentred
⟨h, v̂⟩, as upstream assistant-axis measures them. A ceiling at -τ on -v is a floor at τ on v
(tests/test_interventions.py shows it); upstream's code caps a ceiling. Which tokens are edited
is the scope: every token, the prompt's, the response's, or the last of each forward.
`steering/apply.py` applies these through hooks or nnsight; everything here is pure tensor math.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from persona_dynamics.errors import PersonaDynamicsError

Mode = Literal["add", "ablate", "mean_ablate", "cap"]
Scope = Literal["all", "prompt", "response", "last"]
MODES = ("add", "ablate", "mean_ablate", "cap")
SCOPES = ("all", "prompt", "response", "last")


def unit(v: torch.Tensor) -> torch.Tensor:
    """v / ‖v‖ in float32; a zero vector has no direction and is refused."""
    v = v.float()
    n = v.norm()
    if not torch.isfinite(n) or n == 0:
        raise PersonaDynamicsError("an intervention's vector is zero or not finite: no direction")
    return v / n


def add(h: torch.Tensor, v: torch.Tensor, c: float) -> torch.Tensor:
    """h + c·v (float32)."""
    return h.float() + c * v.float()


def set_projection(h: torch.Tensor, v: torch.Tensor, value: float) -> torch.Tensor:
    """h with its projection on v̂ replaced by `value`; the orthogonal part untouched."""
    u = unit(v)
    h = h.float()
    return h - ((h @ u) - value)[..., None] * u


def cap(
    h: torch.Tensor, v: torch.Tensor, tau: float, direction: Literal["ceiling", "floor"]
) -> torch.Tensor:
    """Keep ⟨h, v̂⟩ at most τ (ceiling: h - v̂·max(0, p - τ)) or at least τ (floor)."""
    u = unit(v)
    h = h.float()
    p = h @ u
    if direction == "ceiling":
        return h - (p - tau).clamp(min=0)[..., None] * u
    if direction == "floor":
        return h + (tau - p).clamp(min=0)[..., None] * u
    raise PersonaDynamicsError(f"cap direction must be 'ceiling' or 'floor', not {direction!r}")


def scope_mask(
    scope: Scope, positions: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor
) -> torch.Tensor:
    """(B, T) bool: which tokens of a forward the scope edits.

    `positions` are the tokens' absolute positions (B, T); row b's prompt is positions below
    `starts[b]`, its response `starts[b]` up to `ends[b]` (generation: no end). `last` is the last
    token of each forward, as upstream: the last prompt token, then every generated token.
    """
    if scope == "all":
        return torch.ones_like(positions, dtype=torch.bool)
    if scope == "last":
        mask = torch.zeros_like(positions, dtype=torch.bool)
        mask[:, -1] = True
        return mask
    s, e = starts.to(positions.device)[:, None], ends.to(positions.device)[:, None]
    if scope == "prompt":
        return positions < s
    if scope == "response":
        return (positions >= s) & (positions < e)
    raise PersonaDynamicsError(f"unknown intervention scope {scope!r} (known: {', '.join(SCOPES)})")


@dataclass(frozen=True)
class Intervention:
    """One edit of chosen blocks' outputs: a mode, a direction per layer, and its settings.

    `coefficient` (add) is in raw units, or with `unit = "norm"` in units of the layer's mean
    residual norm (`norms`), applied along v̂: repeng's normalisation. `values` are the per-layer
    targets in raw ⟨h, v̂⟩ units: τ for a cap, the reference projection for mean ablation.
    """

    mode: Mode
    vectors: Mapping[int, torch.Tensor]
    coefficient: float = 0.0
    unit: Literal["raw", "norm"] = "raw"
    norms: Mapping[int, float] | None = None
    values: Mapping[int, float] | None = None
    direction: Literal["ceiling", "floor"] = "ceiling"
    scope: Scope = "all"
    name: str = field(default="", compare=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise PersonaDynamicsError(
                f"unknown intervention mode {self.mode!r} (known: {', '.join(MODES)})"
            )
        if self.scope not in SCOPES:
            raise PersonaDynamicsError(
                f"unknown intervention scope {self.scope!r} (known: {', '.join(SCOPES)})"
            )
        if not self.vectors:
            raise PersonaDynamicsError(f"intervention {self.name!r}: no layers to act on")
        layers = set(self.vectors)
        if self.mode in ("mean_ablate", "cap") and set(self.values or {}) != layers:
            what = "a threshold τ" if self.mode == "cap" else "a reference projection"
            raise PersonaDynamicsError(
                f"intervention {self.name!r} ({self.mode}): needs {what} for every layer "
                f"{sorted(layers)}, has {sorted(self.values or {})}"
            )
        if self.unit == "norm" and set(self.norms or {}) != layers:
            raise PersonaDynamicsError(
                f"intervention {self.name!r}: a coefficient in norm units needs each layer's mean "
                f"residual norm for {sorted(layers)}, has {sorted(self.norms or {})}"
            )

    @property
    def layers(self) -> list[int]:
        """The blocks it edits, ascending."""
        return sorted(self.vectors)

    def describe(self) -> dict:
        """What it does as plain data, for manifests and store attributes (vectors by digest)."""
        import hashlib

        h = hashlib.sha256()
        for layer in self.layers:
            h.update(str(layer).encode() + self.vectors[layer].float().cpu().numpy().tobytes())
        return {
            "name": self.name, "mode": self.mode, "layers": self.layers,
            "coefficient": self.coefficient, "unit": self.unit,
            "norms": {str(k): float(v) for k, v in (self.norms or {}).items()},
            "values": {str(k): float(v) for k, v in (self.values or {}).items()},
            "direction": self.direction, "scope": self.scope, "vectors_digest": h.hexdigest()[:16],
        }  # fmt: skip

    def edit(self, layer: int, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Block `layer`'s output h (B, T, hidden) edited where `mask` (B, T), in h's dtype."""
        v = self.vectors[layer].to(h.device)
        if self.mode == "add":
            if self.unit == "norm":
                out = add(h, unit(v), self.coefficient * self.norms[layer])
            else:
                out = add(h, v, self.coefficient)
        elif self.mode == "ablate":
            out = set_projection(h, v, 0.0)
        elif self.mode == "mean_ablate":
            out = set_projection(h, v, self.values[layer])
        else:
            out = cap(h, v, self.values[layer], self.direction)
        return torch.where(mask[..., None], out.to(h.dtype), h)
