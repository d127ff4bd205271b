"""space.h5, the reference persona space per layer: its one writer (`analyze`) and one reader.

`write_space` streams one layer group at a time into a temporary file and renames it into place;
`read_space` reads back everything but the full-width arrays' bulk (role vectors, components),
for the comparison across models and for the report.

Format
------
root attrs: run, reference, model, revision, commit, n_layers, hidden_size, layers (analyzed),
  lead_layer, scored, note, score_categories, axis_category, min_samples, n_components,
  target (0.70), bootstrap (B), seed, level (0.95), transcripts_digest, tokens_digest, version.
root datasets: names (G,) vector names (`role@score`, or `role` unscored), `default` last;
  roles (G,); categories (G,) judge score, -1 for default and unscored vectors; counts (G,)
  samples per vector; questions (Q,) question ids (the bootstrap unit); weights (B, Q) each
  replicate's question multiplicities.
group `layer_<i>` per analyzed layer i (zero-based block index); V = G - 1 role vectors in
`names` order, k components:
  datasets vectors (V, d), default (d,), mean (d,) (mean role vector), components (k, d),
    explained_variance (k,), explained_variance_ratio (k,), axis (d,) raw, axis_unit (d,),
    projections (V, k), axis_projections (V,), loadings (V, k) (cosine of each centered role
    vector with each PC), default_projection (k,), default_position (k,),
    boot_loadings (B, V, 3) (replicates' loadings on PC1..3, NaN where a vector is missing);
  attrs: for each statistic s of `space.statistics` (n_vectors, pc1_variance, cos_pc1_axis,
    abs_cos_pc1_axis, n_pcs_target, axis_norm, position_pc1..10, extreme_distance_pc1..10):
    s, s_lo, s_hi (point estimate and bootstrap interval).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from persona_dynamics import __version__
from persona_dynamics.config import Study
from persona_dynamics.dynamics import LOADING_PCS, Reference, summarize
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.files import plain, write_h5
from persona_dynamics.readers import UNSCORED_NOTE, width
from persona_dynamics.space import Frame, Groups
from persona_dynamics.store import ActivationStore

LEVEL = 0.95  # bootstrap intervals
TARGET = 0.70  # variance the `n_pcs_target` statistic counts PCs up to

Fit = tuple[int, Frame, Reference, dict[str, np.ndarray]]  # layer, point frame, frames, statistics


# --- writing -------------------------------------------------------------------------------------


def write_space(
    path: Path,
    cfg: Study,
    store: ActivationStore,
    groups: Groups,
    layers: list[int],
    lead: int,
    questions: np.ndarray,
    weights: np.ndarray,
    fits: Iterable[Fit],
) -> Path:
    """Write space.h5 atomically: the root from the reference store, then each fitted layer."""

    def fill(h5) -> None:
        _root(h5, cfg, store, groups, layers, lead, questions, weights)
        for layer, point, ref, stats in fits:
            _layer(h5.create_group(f"layer_{layer}"), point, ref, stats)

    return write_h5(path, fill)


def _root(h5, cfg: Study, store, groups: Groups, layers, lead, questions, weights) -> None:
    a = cfg.analysis
    attrs = {
        "run": cfg.run_name,
        "reference": cfg.reference_label,
        "model": store.attrs.get("model"),
        "revision": store.attrs.get("revision"),
        "commit": store.attrs.get("commit"),
        "n_layers": store.attrs.get("n_layers"),
        "hidden_size": width(store),
        "layers": np.array(layers),
        "lead_layer": lead,
        "scored": groups.scored,
        "note": "" if groups.scored else UNSCORED_NOTE,
        "score_categories": np.array(a.score_categories),
        "axis_category": a.axis_category,
        "min_samples": a.min_samples,
        "n_components": a.n_components,
        "target": TARGET,
        "bootstrap": a.bootstrap,
        "seed": a.seed,
        "level": LEVEL,
        "transcripts_digest": store.attrs.get("transcripts_digest"),
        "tokens_digest": store.attrs.get("tokens_digest"),
        "version": __version__,
    }
    h5.attrs.update({k: v for k, v in attrs.items() if v is not None})
    h5["names"] = np.array(groups.names, dtype=object)
    h5["roles"] = np.array(groups.roles, dtype=object)
    h5["categories"] = groups.categories
    h5["counts"] = groups.counts()
    h5["questions"] = questions
    h5["weights"] = weights


def _layer(g, point: Frame, ref: Reference, stats: dict[str, np.ndarray]) -> None:
    sp = point.space
    roles = point.vectors[:-1]
    f32 = {
        "vectors": roles,
        "default": point.vectors[-1],
        "mean": sp.mean_,
        "components": sp.components_,
        "axis": sp.axis_,
        "axis_unit": sp.axis_unit_,
        "boot_loadings": ref.loading_array()[1:],
    }
    f64 = {
        "explained_variance": sp.explained_variance_,
        "explained_variance_ratio": sp.explained_variance_ratio_,
        "projections": sp.projections_,
        "axis_projections": sp.project_axis(roles),
        "loadings": sp.loadings(roles),
        "default_projection": sp.default_projection_,
        "default_position": sp.default_position_,
    }
    for name, value in f32.items():
        g.create_dataset(name, data=np.asarray(value, dtype=np.float32))
    for name, value in f64.items():
        g.create_dataset(name, data=np.asarray(value, dtype=np.float64))
    for name, values in stats.items():
        value, lo, hi = summarize(values, LEVEL)
        g.attrs[name], g.attrs[f"{name}_lo"], g.attrs[f"{name}_hi"] = value, lo, hi


# --- reading -------------------------------------------------------------------------------------


@dataclass
class SpaceLayer:
    """One analyzed layer as read back: the role vectors' coordinates and the space's statistics."""

    explained_variance_ratio: np.ndarray  # (k,)
    projections: np.ndarray  # (V, k) coordinates on the PCs
    axis_projections: np.ndarray  # (V,) p(v) on the Assistant Axis
    default_projection: np.ndarray  # (k,)
    default_axis: float  # p(default) = (default - mean) . unit axis
    loadings: np.ndarray  # (1 + B, V, LOADING_PCS): point estimate, then replicates; NaN padded
    stats: dict[str, tuple[float, float, float]]  # statistic -> (value, lo, hi)


@dataclass
class SavedSpace:
    """A space.h5 read back; `names` etc. are the role vectors (the default's row left out)."""

    path: Path
    attrs: dict  # root attributes, as plain values
    names: list[str]
    roles: list[str]
    categories: np.ndarray  # judge score of each vector, -1 unscored
    counts: np.ndarray  # samples per vector
    questions: np.ndarray  # (Q,) question ids
    weights: np.ndarray  # (B, Q) replicate multiplicities
    per_layer: dict[int, SpaceLayer]

    @property
    def layers(self) -> list[int]:
        """The analyzed layers, in the file's order."""
        return list(self.per_layer)

    @property
    def lead(self) -> int:
        """The lead layer."""
        return int(self.attrs["lead_layer"])

    @property
    def n_layers(self) -> int:
        """Blocks of the model (recorded; else one past the deepest analyzed layer)."""
        return self.attrs.get("n_layers") or (max(self.layers) + 1)

    def depth(self, layer: int) -> float:
        """Relative depth of a layer: (layer + 1) / number of layers."""
        return (layer + 1) / self.n_layers


def read_space(path: Path) -> SavedSpace:
    """Read a space.h5: root attrs and vector tables, and each layer's small arrays and stats.

    A file cut short, or one without a dataset or attribute of the format, names the file and
    what is missing.
    """
    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise PersonaDynamicsError(f"{path}: not a readable HDF5 file ({exc})") from None
    try:
        with h5:
            return _read(path, Lookup(path, h5))
    except OSError as exc:  # a damaged chunk
        raise PersonaDynamicsError(f"{path}: unreadable ({exc}); run `analyze` again") from None


class Lookup:
    """A space.h5's datasets and attributes by name; a missing one names the file and the name."""

    def __init__(self, path: Path, h5):
        self.path, self.h5 = path, h5

    def __call__(self, name: str) -> np.ndarray:
        if not isinstance(self.h5.get(name), h5py.Dataset):
            raise PersonaDynamicsError(f"{self.path}: dataset '{name}' missing; run `analyze` "
                                       "again")  # fmt: skip
        return self.h5[name]

    def attr(self, group: str, name: str):
        attrs = self.h5[group].attrs if group else self.h5.attrs
        if name not in attrs:
            where = f"{group}/{name}" if group else name
            raise PersonaDynamicsError(f"{self.path}: attribute '{where}' missing; run "
                                       "`analyze` again")  # fmt: skip
        return attrs[name]


def _read(path: Path, get: Lookup) -> SavedSpace:
    attrs = {k: plain(v) for k, v in get.h5.attrs.items()}
    for name in ("layers", "lead_layer"):
        get.attr("", name)
    per_layer = {int(layer): _read_layer(get, f"layer_{layer}") for layer in attrs["layers"]}
    return SavedSpace(
        path=path,
        attrs=attrs,
        names=list(get("names").asstr()[:-1]),
        roles=list(get("roles").asstr()[:-1]),
        categories=get("categories")[:-1],
        counts=get("counts")[:-1],
        questions=get("questions")[:],
        weights=get("weights")[:],
        per_layer=per_layer,
    )


def _read_layer(get: Lookup, g: str) -> SpaceLayer:
    point = get(f"{g}/loadings")[:, :LOADING_PCS]
    point = np.pad(point, ((0, 0), (0, LOADING_PCS - point.shape[1])), "constant",
                   constant_values=np.nan)  # fmt: skip
    names = [k for k in get.h5[g].attrs if not k.endswith(("_lo", "_hi"))]
    stats = {k: tuple(float(get.attr(g, k + end)) for end in ("", "_lo", "_hi")) for k in names}
    return SpaceLayer(
        explained_variance_ratio=get(f"{g}/explained_variance_ratio")[:],
        projections=get(f"{g}/projections")[:],
        axis_projections=get(f"{g}/axis_projections")[:],
        default_projection=get(f"{g}/default_projection")[:],
        default_axis=float(
            (get(f"{g}/default")[:] - get(f"{g}/mean")[:]) @ get(f"{g}/axis_unit")[:]
        ),
        loadings=np.concatenate([point[None], get(f"{g}/boot_loadings")[:]]),
        stats=stats,
    )


def read_directions(path: Path, name: str) -> dict[int, np.ndarray]:
    """One direction per analyzed layer of a space.h5: `axis` (raw) or `pc<k>` (unit, from 1)."""
    out = {}
    with h5py.File(path, "r") as h5:
        for layer in plain(h5.attrs["layers"]):
            g = h5[f"layer_{layer}"]
            if name == "axis":
                out[int(layer)] = g["axis"][:]
            elif name.startswith("pc") and name[2:].isdigit() and int(name[2:]) >= 1:
                k = int(name[2:])
                if k > g["components"].shape[0]:
                    raise PersonaDynamicsError(
                        f"{path}: has {g['components'].shape[0]} components, no {name}"
                    )
                out[int(layer)] = g["components"][k - 1]
            else:
                raise PersonaDynamicsError(
                    f"{path}: no direction '{name}' (known: axis, pc1, pc2, ...)"
                )
    return out


def read_axis_frame(path: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """(mean role vector, unit axis) per analyzed layer: what p(v) = (v - mean) · û needs."""
    with h5py.File(path, "r") as h5:
        return {
            int(layer): (h5[f"layer_{layer}"]["mean"][:], h5[f"layer_{layer}"]["axis_unit"][:])
            for layer in plain(h5.attrs["layers"])
        }
