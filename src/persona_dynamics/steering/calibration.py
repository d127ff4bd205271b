"""calibration.json: per-layer quantiles of per-token projections, written by `calibrate`.

A cap's τ and a mean ablation's value are named as percentiles of the uncentred projections
⟨h, v̂⟩ over the response tokens of the default and role transcripts (docs/definitions.md), and
a coefficient in norm units scales by the layer's mean residual norm; both are read from here.
Quantiles are stored on a grid of 0.1 percentile, for the pooled tokens (`all`) and for the
default Assistant's (`default`) and the roles' (`roles`) apart. The file records the checkpoint
and the vector it was measured for; `read_calibration` refuses one made for another.

Format: {"label", "model", "revision", "commit", "adapter", "vector", "vector_digest",
"transcripts_digest", "n_transcripts", "grid_step": 0.1, "layers": {"<i>": {"mean_norm",
"n_tokens": {group: n}, "quantiles": {group: [1001 floats]}}}, "version"}.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from persona_dynamics.errors import PersonaDynamicsError

GRID = np.linspace(0.0, 100.0, 1001)
GROUPS = ("all", "default", "roles")


def vector_digest(directions: dict[int, np.ndarray]) -> str:
    """Hash of a direction per layer (layer indices and float32 values)."""
    h = hashlib.sha256()
    for layer in sorted(directions):
        h.update(str(layer).encode() + np.asarray(directions[layer], np.float32).tobytes())
    return h.hexdigest()[:16]


def quantiles(values: np.ndarray) -> list[float]:
    """The values' quantiles on GRID (NaN when there are none)."""
    if values.size == 0:
        return [float("nan")] * len(GRID)
    return np.percentile(values, GRID).tolist()


@dataclass
class Calibration:
    """A calibration.json read back."""

    path: Path
    meta: dict
    layers: dict[int, dict]

    def value(self, layer: int, percentile: float, group: str = "all") -> float:
        """The projection at `percentile` (0-100) of `group`'s tokens at `layer`, raw units."""
        if layer not in self.layers:
            raise PersonaDynamicsError(
                f"{self.path}: no calibration for layer {layer} (has {sorted(self.layers)}); "
                "re-run `persona-dynamics calibrate` with these layers"
            )
        q = self.layers[layer]["quantiles"][group]
        return float(np.interp(percentile, GRID, q))

    def norm(self, layer: int) -> float:
        """The layer's mean residual norm over the calibration tokens."""
        if layer not in self.layers:
            raise PersonaDynamicsError(f"{self.path}: no calibration for layer {layer}")
        return float(self.layers[layer]["mean_norm"])


def read_calibration(path: Path, label: str, digest: str) -> Calibration:
    """Read calibration.json, refusing one measured on another checkpoint or vector."""
    path = Path(path)
    if not path.exists():
        raise PersonaDynamicsError(
            f"{path}: no calibration; run `persona-dynamics calibrate CONFIG` first"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        layers = {int(k): v for k, v in data["layers"].items()}
        for v in layers.values():
            if len(v["quantiles"]["all"]) != len(GRID):
                raise ValueError("a quantile grid of the wrong length")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PersonaDynamicsError(f"{path}: not a calibration file ({exc})") from None
    for key, want in (("label", label), ("vector_digest", digest)):
        if data.get(key) != want:
            raise PersonaDynamicsError(
                f"{path}: calibrated for another {key.replace('_', ' ')} (recorded "
                f"{data.get(key)!r}, now {want!r}); re-run `persona-dynamics calibrate`"
            )
    return Calibration(path, data, layers)
