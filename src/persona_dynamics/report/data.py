"""A run's analysis files read back as plain Python: dicts, lists of rows and small numpy arrays.

`load_run(dir)` reads what `analyze` and `compare` wrote (the formats are documented at the top of
`persona_dynamics.analysis` and `persona_dynamics.spacefile`): space.h5 through its one reader
(only the small per-layer arrays, never the role vectors' full width), summary.json, and when
present dynamics.json, dynamics.csv, labels.csv, across/*.json, and the adapter placements of
`adapters.place` (adapters.csv, adapters_nearest.csv). The helpers below turn them into the series
the plots and tables draw, so the HTML report and the notebook show the same numbers.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from persona_dynamics.config import Study
from persona_dynamics.errors import PersonaDynamicsError, located
from persona_dynamics.roles import DEFAULT, read_json, read_text
from persona_dynamics.spacefile import read_space

TEXT = {
    "space", "label", "vector", "role", "statistic", "base", "text", "setting", "mode", "layers",
    "conversation", "domain", "direction",
}  # fmt: skip
INTS = {"stage", "layer", "category", "n_samples", "rank"}
# The columns (and JSON keys) the report reads from each file: a file without one is refused.
COLUMNS = {
    "dynamics.csv": ("space", "label", "layer", "vector", "role", "category", "axis", "axis_lo",
                     "axis_hi", "z", "z_lo", "z_hi", "pc1"),
    "labels.csv": ("space", "label", "layer", "statistic", "value", "lo", "hi"),
    "adapters.csv": ("label", "base", "text", "layer", "statistic", "value", "lo", "hi"),
    "adapters_nearest.csv": ("label", "text", "layer", "vector", "rank", "cos", "cos_lo", "cos_hi"),
}  # fmt: skip
SUMMARY = ("run", "reference", "lead_layer", "per_layer")  # analysis/<run>/summary.json
NAN = (math.nan, math.nan, math.nan)


@dataclass
class LayerSpace:
    """The reference space at one layer: role vectors' coordinates and the space's statistics."""

    layer: int
    names: list[str]  # role vector names (`role@score`, or `role` unscored); default excluded
    roles: list[str]
    categories: np.ndarray  # judge score of each vector, -1 unscored
    counts: np.ndarray  # samples per vector
    explained_variance_ratio: np.ndarray  # (k,)
    projections: np.ndarray  # (V, k) coordinates on the PCs
    axis_projections: np.ndarray  # (V,) p(v) on the Assistant Axis
    default_projection: np.ndarray  # (k,)
    default_axis: float  # p(default)
    stats: dict[str, tuple[float, float, float]]  # statistic -> (value, lo, hi)


@dataclass
class Run:
    """One run's analysis outputs; `stages` are the checkpoint labels, `adapters` the rest."""

    dir: Path
    meta: dict  # space.h5 root attributes
    summary: dict
    spaces: dict[int, LayerSpace]
    dynamics: dict | None = None
    vectors: list[dict] = field(default_factory=list)  # dynamics.csv rows
    labels: list[dict] = field(default_factory=list)  # labels.csv rows
    across: dict[str, dict] = field(default_factory=dict)  # other run -> across/<run>.json
    adapters: dict[str, str] = field(default_factory=dict)  # adapter label -> base ("" unknown)
    placed: list[dict] = field(default_factory=list)  # adapters.csv rows
    nearest: list[dict] = field(default_factory=list)  # adapters_nearest.csv rows
    dose: list[dict] = field(default_factory=list)  # steering/<run>/dose_response.csv rows
    drift: list[dict] = field(default_factory=list)  # drift/<run>/turns.csv rows
    slopes: list[dict] = field(default_factory=list)  # drift/<run>/slopes.csv rows
    traits: dict = field(default_factory=dict)  # traits/<run>/summary.json "traits"
    toy: dict | None = None  # toy.json, when the run's model is a toy-organism checkpoint

    @property
    def layers(self) -> list[int]:
        """Analyzed layers, ascending."""
        return sorted(self.spaces)

    @property
    def lead(self) -> int:
        """The layer the analysis leads with (the middle one by default)."""
        return int(self.summary["lead_layer"])

    @property
    def scored(self) -> bool:
        """Whether judge scores filtered the role vectors."""
        return bool(self.summary.get("scored"))

    @property
    def compared(self) -> list[str]:
        """Every label compare projected, in its order (stages and adapters)."""
        return list(self.dynamics["labels"]) if self.dynamics else []

    @property
    def stages(self) -> list[str]:
        """The checkpoint labels along training, adapters left out."""
        return [x for x in self.compared if x not in self.adapters]

    @property
    def reference(self) -> str:
        """The reference checkpoint's label."""
        return str(self.summary["reference"])


def load_run(path: str | Path, adapters: dict[str, str] | None = None) -> Run:
    """Read a run's analysis directory (`<output_root>/analysis/<run>`)."""
    path = Path(path)
    for name in ("space.h5", "summary.json"):
        if not (path / name).is_file():
            raise PersonaDynamicsError(
                f"{path / name}: missing; run `persona-dynamics analyze` for this run first"
            )
    summary = _json(path / "summary.json", SUMMARY)
    meta, spaces = _spaces(path / "space.h5")
    run = Run(dir=path, meta=meta, summary=summary, spaces=spaces, adapters=dict(adapters or {}))
    run.toy = toy_truth(summary.get("model"))
    if (path / "dynamics.json").is_file():
        run.dynamics = _json(path / "dynamics.json", ("labels",))
        run.vectors = read_rows(path / "dynamics.csv")
        run.labels = read_rows(path / "labels.csv")
    for other in sorted((path / "across").glob("*.json")):
        run.across[other.stem] = _json(other, (), "compare")
    if (path / "adapters.csv").is_file():
        run.placed = read_rows(path / "adapters.csv")
        run.nearest = read_rows(path / "adapters_nearest.csv")
        run.adapters |= {r["label"]: r["base"] for r in run.placed}
    return run


def run_of(cfg: Study) -> Run:
    """A config's run; its adapter labels are kept apart from the training stages."""
    labels = [c.label for c in cfg.checkpoints if c.adapter]
    labels += [a.name for a in cfg.adapters.training] if cfg.adapters else []
    run = load_run(cfg.path("analysis"), dict.fromkeys(labels, ""))
    dose = cfg.path("steering", "dose_response.csv")
    if dose.is_file():
        run.dose = read_rows(dose)
    if cfg.path("drift", "turns.csv").is_file():
        run.drift = read_rows(cfg.path("drift", "turns.csv"))
        run.slopes = read_rows(cfg.path("drift", "slopes.csv"))
    if cfg.path("traits", "summary.json").is_file():
        run.traits = _json(cfg.path("traits", "summary.json"), ("traits",), "traits")["traits"]
    return run


# --- reading -------------------------------------------------------------------------------------


def toy_truth(model: str | None) -> dict | None:
    """The planted truth of a toy-organism build, if `model` is one of its checkpoints."""
    path = Path(model).parent / "toy.json" if model else None
    if path is None or not path.is_file():
        return None
    return _json(path, ("plant", "geometry", "expected_effect"), "toy build")


def _json(path: Path, keys: tuple[str, ...], stage: str = "analyze") -> dict:
    """A JSON object written by `stage`, with the keys the report reads."""
    data = read_json(path, obj=True)
    missing = [k for k in keys if k not in data]
    if missing:
        raise PersonaDynamicsError(
            located(path, f"key(s) {', '.join(missing)} missing; run `{stage}` again")
        )
    return data


def _cell(key: str, text: str):
    if key in TEXT:
        return text
    if text == "":
        return math.nan
    return int(text) if key in INTS else float(text)


def read_rows(path: Path) -> list[dict]:
    """A CSV written by `compare`, numbers parsed (empty cells are NaN); a missing column, a row
    cut short or a cell that is not a number names file:line (and the column)."""
    if not path.is_file():
        raise PersonaDynamicsError(f"{path}: missing; run `persona-dynamics compare` again")
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    missing = [c for c in COLUMNS.get(path.name, ()) if c not in (reader.fieldnames or [])]
    if missing:
        raise PersonaDynamicsError(located(path, f"column(s) {', '.join(missing)} missing", 1))
    rows = []
    for row in reader:
        n = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None, []))
        if n != len(reader.fieldnames):
            raise PersonaDynamicsError(located(
                path, f"{n} cells where the header has {len(reader.fieldnames)} (a file cut "
                "short?); run `persona-dynamics compare` again", reader.line_num))  # fmt: skip
        cells = {}
        for k, v in row.items():
            try:
                cells[k] = _cell(k, v)
            except ValueError:
                raise PersonaDynamicsError(
                    located(path, f"column '{k}': {v!r} is not a number", reader.line_num)
                ) from None
        rows.append(cells)
    return rows


def _spaces(path: Path) -> tuple[dict, dict[int, LayerSpace]]:
    saved = read_space(path)
    spaces = {
        layer: LayerSpace(
            layer=layer,
            names=saved.names,
            roles=saved.roles,
            categories=saved.categories,
            counts=saved.counts,
            explained_variance_ratio=g.explained_variance_ratio,
            projections=g.projections,
            axis_projections=g.axis_projections,
            default_projection=g.default_projection,
            default_axis=g.default_axis,
            stats=g.stats,
        )
        for layer, g in saved.per_layer.items()
    }
    return saved.attrs, spaces


# --- series for plots and tables -----------------------------------------------------------------


def statistic(
    run: Run, label: str, layer: int, name: str, space: str = "reference"
) -> tuple[float, float, float]:
    """(value, lo, hi) of one per-label statistic from labels.csv; NaNs when absent."""
    for r in run.labels:
        if (r["space"], r["label"], r["layer"], r["statistic"]) == (space, label, layer, name):
            return r["value"], r["lo"], r["hi"]
    return NAN


def vector_rows(
    run: Run, layer: int, label: str | None = None, space: str = "reference"
) -> list[dict]:
    """dynamics.csv rows at one layer (one label's, or every label's), in file order."""
    return [
        r
        for r in run.vectors
        if r["space"] == space and r["layer"] == layer and (label is None or r["label"] == label)
    ]


def series(run: Run, layer: int, name: str, labels: list[str] | None = None) -> dict:
    """A statistic across labels (default: the stages): {label, value, lo, hi} lists."""
    labels = run.stages if labels is None else labels
    vals = [statistic(run, x, layer, name) for x in labels]
    return {
        "label": labels,
        **{k: [v[i] for v in vals] for i, k in enumerate(("value", "lo", "hi"))},
    }


def ranking(run: Run, layer: int) -> dict:
    """Role vectors sorted along the reference axis (Assistant end last), with intervals.

    Intervals come from compare's reference-label rows; without them they are NaN.
    """
    sp = run.spaces[layer]
    value = np.asarray(sp.axis_projections, dtype=float)
    lo = hi = np.full(len(value), np.nan)
    rows = {r["vector"]: r for r in vector_rows(run, layer, run.reference)}
    if rows:
        lo = np.array([rows.get(n, {}).get("axis_lo", math.nan) for n in sp.names])
        hi = np.array([rows.get(n, {}).get("axis_hi", math.nan) for n in sp.names])
    order = np.argsort(value, kind="stable")
    d = rows.get(DEFAULT, {})
    return {
        "names": [sp.names[i] for i in order],
        "value": value[order],
        "lo": lo[order],
        "hi": hi[order],
        "default": (sp.default_axis, d.get("axis_lo", math.nan), d.get("axis_hi", math.nan)),
    }


def trajectories(run: Run, layer: int, roles: list[str] | None = None) -> dict[str, dict]:
    """Each vector's projection and z-score across the stages: vector -> {axis, z, ...} lists.

    Without a judge every role has one vector; with one, only the axis category's vectors
    (one line per role), plus the default. `roles` narrows to those roles.
    """
    keep = {int(run.meta.get("axis_category", 3)), -1}
    out: dict[str, dict] = {}
    stage = {x: i for i, x in enumerate(run.stages)}
    for r in vector_rows(run, layer):
        if r["label"] not in stage or (r["category"] not in keep):
            continue
        if roles is not None and r["role"] not in roles and r["vector"] != DEFAULT:
            continue
        t = out.setdefault(r["vector"], {"role": r["role"], "label": []})
        t["label"].append(r["label"])
        for k in ("axis", "axis_lo", "axis_hi", "z", "z_lo", "z_hi"):
            t.setdefault(k, []).append(r[k])
    return out


def placements(run: Run, layer: int) -> list[dict]:
    """Each adapter's place per kind of text (adapters.csv): statistic -> (value, lo, hi).

    Also its base, the nearest role vectors [(vector, cos, lo, hi)] and `nearest_share`.
    """
    out: dict[tuple[str, str], dict] = {}
    for r in run.placed:
        if r["layer"] == layer:
            p = out.setdefault(
                (r["label"], r["text"]),
                {"adapter": r["label"], "base": r["base"], "text": r["text"], "nearest": []},
            )
            p[r["statistic"]] = (r["value"], r["lo"], r["hi"])
    for r in sorted(run.nearest, key=lambda r: r["rank"]):
        if r["layer"] == layer and (r["label"], r["text"]) in out:
            out[r["label"], r["text"]]["nearest"].append(
                (r["vector"], r["cos"], r["cos_lo"], r["cos_hi"])
            )
    return list(out.values())


def default_pcs(run: Run, label: str, layer: int) -> tuple[float, float]:
    """A label's default vector on the reference PC1 and PC2 (NaN when compare lacks it)."""
    if label == run.reference:
        d = run.spaces[layer].default_projection
        return float(d[0]), float(d[1]) if len(d) > 1 else math.nan
    for r in vector_rows(run, layer, label):
        if r["vector"] == DEFAULT:
            return r["pc1"], r.get("pc2", math.nan)
    return math.nan, math.nan


def stage_table(run: Run, layer: int) -> list[dict]:
    """One row per stage with the paper's statistics: value, lo, hi triples (NaN when absent).

    The PCA statistics of a stage's own space come from compare's refit rows (analysis.refit);
    the reference's always come from analyze's summary.
    """
    own = {
        "n_pcs": "n_pcs_target",
        "cos_pc1_axis": "cos_pc1_axis",
        "position_pc1": "position_pc1",
    }
    moved = {
        "axis_mean": "axis_mean",
        "axis_default": "axis_default",
        "separation": "separation",
        "axis_cos": "axis_cos",
        "loading_corr_pc1": "loading_corr_pc1",
    }
    lead = run.summary["per_layer"][str(layer)]
    rows = []
    for label in run.stages or [run.reference]:
        row: dict = {"label": label, "reference": label == run.reference}
        for key, stat in own.items():
            if label == run.reference:
                s = lead[stat]
                row[key] = tuple(math.nan if s[k] is None else s[k] for k in ("value", "lo", "hi"))
            else:
                row[key] = statistic(run, label, layer, stat, space="refit")
        for key, stat in moved.items():
            row[key] = statistic(run, label, layer, stat)
        rows.append(row)
    return rows
