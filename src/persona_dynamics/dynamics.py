"""Movement across checkpoints: every label's vectors seen from the reference label's space.

Definitions (docs/definitions.md):

- Projection of a vector v: p(v) = (v - mu_ref) . u_ref, with mu_ref the reference's mean role
  vector and u_ref its unit Assistant Axis (raw activation units); coordinates on the reference's
  PCs likewise. Nothing is refit per label for these.
- Scale-free Assistant separation: (p(default) - mean p(roles)) / std p(roles), over the kept role
  vectors (population std); each vector's z-score on the axis the same way, so the default's
  z-score is the separation.
- Per label also: mean role projection, default projection, spread (std) of roles on PC1..PC3,
  mean role-vector norm, the cosine of the label's own axis with the reference axis, and the
  correlation of role loadings between the label's own (refit) space and the reference's on the
  top PCs, as |r|: a PC's sign is a convention (PC1's points toward the Assistant, which is
  unstable where the default sits mid-PC1, e.g. a base model), and the question is whether the
  two spaces order the roles alike. The sign of PC1 relative to the axis is in cos_pc1_axis.
- Refit (only when asked; marked `refit` in outputs): the label's own space, its components
  sign-aligned to the reference's, with the same statistics measured in it.
- Movement: differences between consecutive stages (current minus previous) of the per-label
  values and of each vector's projection and z-score.

Every value is computed on the point estimate and on each bootstrap replicate, with the same
question weights for the reference and every label (a paired bootstrap over questions), so
differences and cosines get intervals. Arrays have length 1 + B on their first axis: index 0 is
the point estimate, then the replicates (NaN where a replicate could not form the statistic).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from persona_dynamics.space import Frame, Groups, PersonaSpace, interval, loading_correlation
from persona_dynamics.space import statistics as space_statistics

LOADING_PCS = 3  # top PCs whose role loadings are compared between spaces
SPREAD_PCS = 3  # PCs on which the spread of roles is reported
MOVING = ("axis_mean", "axis_default", "separation", "axis_std", "axis_cos", "cos_pc1_axis")


@dataclass
class Reference:
    """The reference label's space in every frame (point, then replicates) and its loadings."""

    names: tuple[str, ...]  # role vector names, default excluded
    spaces: list[PersonaSpace | None] = field(default_factory=list)
    loadings: list[np.ndarray] = field(default_factory=list)  # (V, LOADING_PCS) per frame

    def append(self, frame: Frame) -> None:
        """Add the next frame's fitted space and the loadings of its own role vectors."""
        self.spaces.append(frame.space)
        self.loadings.append(_loadings(frame.space, frame.vectors[:-1], len(self.names)))

    def statistics(self, top: int = 10) -> dict[str, np.ndarray]:
        """The paper's per-space statistics (space.statistics) per frame: name -> (1 + B,)."""
        rows = [space_statistics(s, top) if s is not None else {} for s in self.spaces]
        keys = next((r.keys() for r in rows if r), ())
        return {k: np.array([r.get(k, np.nan) for r in rows]) for k in keys}

    def loading_array(self) -> np.ndarray:
        """Loadings of every frame stacked: (1 + B, V, LOADING_PCS)."""
        return np.stack(self.loadings)


def _loadings(space: PersonaSpace | None, vectors: np.ndarray, n: int) -> np.ndarray:
    out = np.full((n, LOADING_PCS), np.nan)
    if space is not None:
        load = space.loadings(vectors)[:, :LOADING_PCS]
        out[:, : load.shape[1]] = load
    return out


def loading_agreement(
    names_a: Sequence[str], load_a: np.ndarray, names_b: Sequence[str], load_b: np.ndarray
) -> np.ndarray:
    """Role-loading correlation per PC between two spaces, per frame, as |r|: (F, m).

    `load_a` and `load_b` are (F, V, m) stacks of frames paired by index (the same bootstrap
    replicate when both used the same seed and questions).
    """
    n = min(len(load_a), len(load_b))
    out = np.stack([loading_correlation(names_a, load_a[i], names_b, load_b[i]) for i in range(n)])
    return np.abs(out)


@dataclass
class LabelStats:
    """One label seen from the reference: name -> values with first axis 1 + B frames."""

    label: str
    summary: dict[str, np.ndarray]  # per label: (F,)
    vectors: dict[str, np.ndarray]  # per vector, default last: (F, G)
    refit_summary: dict[str, np.ndarray]
    refit_vectors: dict[str, np.ndarray]


def compare(
    label: str, ref: Reference, frames: Iterable[Frame], groups: Groups, n_pcs: int
) -> LabelStats:
    """Project a label's frames into the reference's frames (paired by index) and measure it."""
    rows = []
    for i, f in enumerate(frames):
        if i >= len(ref.spaces):
            raise ValueError(f"more frames than the reference's {len(ref.spaces)}")
        rows.append(_measure(ref.spaces[i], ref.loadings[i], f, groups, n_pcs))
    if len(rows) != len(ref.spaces) or rows[0] is None:
        raise ValueError(f"{len(rows)} frames for {len(ref.spaces)}, or no point estimate")
    parts = []
    for i, template in enumerate(rows[0]):
        fill = {k: np.full(np.shape(v), np.nan) for k, v in template.items()}
        parts.append({k: np.stack([(r[i] if r else fill)[k] for r in rows]) for k in template})
    return LabelStats(label, *parts)


def movement(prev: LabelStats, cur: LabelStats) -> LabelStats:
    """Stage-to-stage differences, current minus previous, frame by frame (paired replicates)."""

    def delta(a: dict, b: dict, keys: Iterable[str]) -> dict:
        return {f"delta_{k}": b[k] - a[k] for k in keys if k in a and k in b}

    return LabelStats(
        cur.label,
        delta(prev.summary, cur.summary, MOVING),
        delta(prev.vectors, cur.vectors, ("axis", "z")),
        delta(prev.refit_summary, cur.refit_summary, MOVING),
        delta(prev.refit_vectors, cur.refit_vectors, ("axis", "z")),
    )


def summarize(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point estimate (frame 0) and the percentile interval over the replicates (frames 1..)."""
    values = np.asarray(values, dtype=float)
    lo, hi = interval(values[1:], level)
    return values[0], lo, hi


def _measure(
    ref: PersonaSpace | None, ref_load: np.ndarray, f: Frame, groups: Groups, n_pcs: int
) -> tuple[dict, dict, dict, dict] | None:
    if ref is None or f.space is None:
        return None
    names = groups.names[:-1]
    p = ref.project_axis(f.vectors)
    mean, std = np.nanmean(p[:-1]), np.nanstd(p[:-1])
    z = (p - mean) / std
    pcs = _pad(ref.transform(f.vectors), n_pcs)
    own = f.space
    own_load = _loadings(own, f.vectors[:-1], len(names))
    corr = loading_agreement(names, ref_load[None], names, own_load[None])[0]
    summary = {
        "axis_mean": mean,
        "axis_std": std,
        "axis_default": p[-1],
        "separation": z[-1],
        "axis_cos": float(own.axis_unit_ @ ref.axis_unit_),
        "role_norm": np.nanmean(np.linalg.norm(f.vectors[:-1], axis=1)),
    }
    spread = _pad(ref.transform(f.vectors[:-1]), SPREAD_PCS)  # NaN past the space's own PCs
    summary |= {
        f"spread_pc{j + 1}": np.nanstd(col) if np.isfinite(col).any() else np.nan
        for j, col in enumerate(spread.T)
    }
    summary |= {f"loading_corr_pc{j + 1}": corr[j] for j in range(LOADING_PCS)}
    vectors = {"axis": p, "z": z} | {f"pc{j + 1}": pcs[:, j] for j in range(n_pcs)}
    mine = own.aligned(ref)
    q = mine.project_axis(f.vectors)
    q_mean, q_std = np.nanmean(q[:-1]), np.nanstd(q[:-1])
    qz = (q - q_mean) / q_std
    q_pcs = _pad(mine.transform(f.vectors), n_pcs)
    refit_summary = space_statistics(mine, top=SPREAD_PCS) | {
        "axis_mean": q_mean,
        "axis_std": q_std,
        "axis_default": q[-1],
        "separation": qz[-1],
    }
    refit_vectors = {"axis": q, "z": qz} | {f"pc{j + 1}": q_pcs[:, j] for j in range(n_pcs)}
    return summary, vectors, refit_summary, refit_vectors


def _pad(x: np.ndarray, k: int) -> np.ndarray:
    """(n, k') coordinates padded with NaN (or cut) to exactly k columns."""
    out = np.full((len(x), k), np.nan)
    m = min(k, x.shape[1])
    out[:, :m] = x[:, :m]
    return out
