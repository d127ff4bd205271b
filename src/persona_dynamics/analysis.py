"""The analyze and compare stages: activation stores in; persona space and dynamics files out.

`run_analyze(cfg)` fits the reference label's persona space at every analyzed layer (default:
every captured layer) and writes `space.h5` and `summary.json`. `run_compare(cfg)` projects every
label into that space and writes `dynamics.csv`, `labels.csv` (plus `.parquet` twins when pyarrow
is importable) and `dynamics.json`. `run_compare(cfg, across_models=other)` sets two runs' spaces
side by side (role-loading correlation and the paper's statistics, never projection) and writes
`across/<other run>.json` and `.csv`. All files live in `<output_root>/analysis/<run>/`.

Stores are read through `readers`, space.h5 written and read through `spacefile`, and every
JSON and CSV file written whole through `files`. Each layer of each store is streamed once into
per-(question, vector) sums (`space.GroupSums`); the bootstrap over questions (B replicates,
seeded, 95% percentile intervals) reuses them. Without judge scores (no `[judge]` in the config)
every role has one vector from all its samples; outputs say so (`scored` false and a `note`).

Output formats
--------------
space.h5: see `persona_dynamics.spacefile`, its one writer and reader.
summary.json
  run, reference, model, revision, commit, scored, note, layers, lead_layer, n_questions,
  bootstrap, seed, level; vectors: {kept, by_category {score: n}, default_samples,
  unscored_samples, dropped [{name, role, category, count, reason}], roles_left_out [role]};
  per_layer: {layer: {statistic: {value, lo, hi}}}; paper: [{statistic, layer, value, lo, hi,
  paper}] (each of the paper's numbers beside ours, at the lead layer unless stated).
dynamics.csv: one row per (space, label, layer, vector):
  space (`reference`: projected into the reference space; `refit`: the label's own space,
  sign-aligned, only with analysis.refit), label, stage (0-based order), layer, vector, role,
  category, n_samples, axis, axis_lo, axis_hi (p(v)), z, z_lo, z_hi (z-score on the axis among
  the label's roles; for `default` this is the separation), delta_axis, delta_axis_lo,
  delta_axis_hi, delta_z, delta_z_lo, delta_z_hi (change from the previous stage; empty for the
  first), pc1..pc<k> (coordinates on the space's PCs, point estimates).
labels.csv: one row per (space, label, layer, statistic): space, label, stage, layer, statistic,
  value, lo, hi. Statistics (reference space): axis_mean, axis_std, axis_default, separation,
  axis_cos (own axis vs reference axis), role_norm, spread_pc1..3, loading_corr_pc1..3 (own
  space vs reference, |r|), and delta_<s> for s in dynamics.MOVING from the second
  stage on; refit space: space.statistics (top 3 PCs) plus axis_mean, axis_std, axis_default,
  separation, and their deltas.
dynamics.json: run, reference, labels (stage order), layers, lead_layer, scored, note,
  bootstrap, level, refit; lead: {label: {statistic: {value, lo, hi}}} (reference space, lead
  layer; refit statistics under refit_lead when asked).
across/<other run>.json: runs, models, lead_layers, paired (same questions, seed and B: the
  replicates are paired by question), loading_correlation [{layer_a, layer_b, pc,
  value, lo, hi}] (layers matched by relative depth, plus the lead pair), side_by_side
  {statistic: {run: {value, lo, hi}}} at the lead layers, paper [{statistic, value, lo, hi,
  paper}]. across/<other run>.csv: the loading_correlation rows.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from persona_dynamics.config import Study
from persona_dynamics.dynamics import (
    LOADING_PCS,
    LabelStats,
    Reference,
    compare,
    loading_agreement,
    movement,
    summarize,
)
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.files import write_json, write_table
from persona_dynamics.lock import hold, lock_file
from persona_dynamics.readers import (
    UNSCORED_NOTE,
    analyzed_layers,
    check_same_samples,
    layer_sums,
    left_out,
    open_store,
    sample_groups,
    stage_labels,
)
from persona_dynamics.roles import read_json
from persona_dynamics.space import Groups, bootstrap_weights, frames
from persona_dynamics.spacefile import LEVEL, TARGET, SavedSpace, read_space, write_space
from persona_dynamics.store import ActivationStore

log = logging.getLogger(__name__)

POSITION_PCS = 10


# --- analyze -------------------------------------------------------------------------------------


def run_analyze(cfg: Study) -> Path:
    """Fit the reference's persona space per layer; write space.h5 and summary.json."""
    with hold(lock_file(cfg.path("analysis"), "analysis")):
        return _analyze(cfg)


def _analyze(cfg: Study) -> Path:
    """Analyze under the analysis directory's lock."""
    a = cfg.analysis
    out = cfg.path("analysis")
    out.mkdir(parents=True, exist_ok=True)
    with open_store(cfg, cfg.reference_label) as store:
        groups = sample_groups(cfg, store)
        layers, lead = analyzed_layers(cfg, store)
        questions = np.unique(store.question_idx)
        weights = bootstrap_weights(len(questions), a.bootstrap, a.seed)
        per_layer: dict[int, dict[str, np.ndarray]] = {}

        def fits():
            for layer in tqdm(layers, desc="analyze"):
                sums = layer_sums(store, layer, groups.index, len(groups.names), questions)
                ref, point = Reference(groups.names[:-1]), None
                for f in frames(sums, groups, weights, a.n_components, TARGET):
                    point = f if point is None else point
                    ref.append(f)
                per_layer[layer] = ref.statistics(POSITION_PCS)
                yield layer, point, ref, per_layer[layer]

        path = write_space(
            out / "space.h5", cfg, store, groups, layers, lead, questions, weights, fits()
        )
        summary = _summary(cfg, store, groups, layers, lead, len(questions), per_layer)
        summary |= {"preset": cfg.preset, "preset_departures": cfg.departures()}
    write_json(out / "summary.json", summary)
    log.info("analyze: wrote %s and %s", path, out / "summary.json")
    return path


# The paper's figure per statistic, and the range a run's value must fall in to agree with the
# finding it stands for (None: a scale, not a finding): few PCs (a 25-role toy may need 3), PC1
# the axis, the Assistant at one end of PC1 and inside the role range on PCs 2-10.
PAPER = {
    "n_vectors": ("377 to 463 role vectors (275 roles)", None),
    "n_pcs_target": ("4 to 19 PCs explain 70% of the variance", (3, 20)),
    "cos_pc1_axis": ("> 0.71 at the middle layer", (0.71, 1.0)),
    "min_cos_pc1_axis": ("> 0.60 at every layer", (0.60, 1.0)),
    "extreme_distance_pc1": ("0.03 from an extreme on PC1", (-0.05, 0.05)),
    "extreme_distance_pc2_10": ("0.27 to 0.50 on PCs 2-10", (0.15, 0.5)),
}


def _summary(cfg, store, groups: Groups, layers, lead, n_questions, per_layer) -> dict:
    a = cfg.analysis
    counts = groups.counts()
    by_cat = dict(Counter(str(c) for c in groups.categories[:-1]))
    lead_stats = per_layer[lead]
    cos_min = _nan_reduce(np.nanmin, np.stack([per_layer[x]["cos_pc1_axis"] for x in layers]))
    later = np.stack([lead_stats[f"extreme_distance_pc{j}"] for j in range(2, POSITION_PCS + 1)])
    paper = [
        _paper_row("role vectors kept", None, np.array([groups.n_roles]), "n_vectors"),
        _paper_row("PCs for 70% of variance", lead, lead_stats["n_pcs_target"], "n_pcs_target"),
        _paper_row("cos(PC1, Assistant Axis)", lead, lead_stats["cos_pc1_axis"], "cos_pc1_axis"),
        _paper_row("min over layers of cos(PC1, axis)", None, cos_min, "min_cos_pc1_axis"),
        _paper_row(
            "Assistant's distance from the nearest extreme role on PC1",
            lead,
            lead_stats["extreme_distance_pc1"],
            "extreme_distance_pc1",
        ),
        _paper_row(
            "... smallest on PCs 2-10",
            lead,
            _nan_reduce(np.nanmin, later),
            "extreme_distance_pc2_10",
        ),
        _paper_row(
            "... largest on PCs 2-10",
            lead,
            _nan_reduce(np.nanmax, later),
            "extreme_distance_pc2_10",
        ),
    ]
    return {
        "run": cfg.run_name,
        "reference": cfg.reference_label,
        "model": store.attrs.get("model"),
        "revision": store.attrs.get("revision"),
        "commit": store.attrs.get("commit"),
        "scored": groups.scored,
        "note": None if groups.scored else UNSCORED_NOTE,
        "layers": layers,
        "lead_layer": lead,
        "n_questions": n_questions,
        "bootstrap": a.bootstrap,
        "seed": a.seed,
        "level": LEVEL,
        "vectors": {
            "kept": groups.n_roles,
            "by_category": by_cat,
            "default_samples": int(counts[-1]),
            "unscored_samples": groups.unscored_samples,
            "dropped": list(groups.dropped),
            "roles_left_out": left_out(groups),
        },
        "per_layer": {str(x): {k: _interval(v) for k, v in per_layer[x].items()} for x in layers},
        "paper": paper,
    }


def _nan_reduce(fn, values: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(values).any(axis=0)
        out = np.full(values.shape[1:], np.nan)
        out[ok] = fn(values[:, ok], axis=0)
    return out


def _paper_row(statistic: str, layer: int | None, values: np.ndarray, key: str) -> dict:
    """The statistic beside the paper's figure; `agrees` when its point value is in `bound`."""
    paper, bound = PAPER[key]
    row = {"statistic": statistic, "layer": layer, **_interval(values), "paper": paper}
    value = float(row["value"])
    agrees = None if bound is None or not np.isfinite(value) else bound[0] <= value <= bound[1]
    return row | {"bound": None if bound is None else list(bound), "agrees": agrees}


def _interval(values: np.ndarray) -> dict:
    value, lo, hi = summarize(np.asarray(values, dtype=float), LEVEL)
    return {"value": value, "lo": lo, "hi": hi}


# --- compare -------------------------------------------------------------------------------------


def run_compare(
    cfg: Study, across_models: Study | None = None, labels: list[str] | None = None
) -> Path:
    """Project every label into the reference space per layer; write dynamics files.

    With `across_models`, instead set this run's analyzed space beside another run's.
    """
    with hold(lock_file(cfg.path("analysis"), "analysis")):
        if across_models is not None:
            return run_across(cfg, across_models)
        return _compare(cfg, labels)


def _compare(cfg: Study, labels: list[str] | None) -> Path:
    """Compare under the analysis directory's lock."""
    a = cfg.analysis
    labels = labels or stage_labels(cfg)
    out = cfg.path("analysis")
    out.mkdir(parents=True, exist_ok=True)
    stores: dict[str, ActivationStore] = {}
    try:
        ref_store = stores[cfg.reference_label] = open_store(cfg, cfg.reference_label)
        groups = sample_groups(cfg, ref_store)
        layers, lead = analyzed_layers(cfg, ref_store)
        for label in labels:
            if label not in stores:
                stores[label] = open_store(cfg, label)
                check_same_samples(ref_store, stores[label])
                analyzed_layers(cfg, stores[label])
        questions = np.unique(ref_store.question_idx)
        weights = bootstrap_weights(len(questions), a.bootstrap, a.seed)
        vec_rows, label_rows, lead_stats = [], [], {}
        for layer in tqdm(layers, desc="compare"):
            ref_sums = layer_sums(ref_store, layer, groups.index, len(groups.names), questions)
            ref = Reference(groups.names[:-1])
            for f in frames(ref_sums, groups, weights, a.n_components, TARGET):
                ref.append(f)
            prev = None
            for stage, label in enumerate(tqdm(labels, desc=f"layer {layer}", leave=False)):
                sums = ref_sums
                if label != cfg.reference_label:
                    sums = layer_sums(
                        stores[label], layer, groups.index, len(groups.names), questions
                    )
                fr = frames(sums, groups, weights, a.n_components, TARGET)
                cur = compare(label, ref, fr, groups, a.n_components)
                move = movement(prev, cur) if prev is not None else None
                where = {"label": label, "stage": stage, "layer": layer}
                vec_rows += _vector_rows(where, groups, cur, move, a.refit)
                label_rows += _label_rows(where, cur, move, a.refit)
                if layer == lead:
                    lead_stats[label] = _lead(cur, move)
                prev = cur
    finally:
        for store in stores.values():
            store.close()
    write_table(out / "dynamics.csv", vec_rows)
    write_table(out / "labels.csv", label_rows)
    write_json(
        out / "dynamics.json",
        {
            "run": cfg.run_name,
            "reference": cfg.reference_label,
            "labels": labels,
            "layers": layers,
            "lead_layer": lead,
            "scored": groups.scored,
            "note": None if groups.scored else UNSCORED_NOTE,
            "bootstrap": a.bootstrap,
            "level": LEVEL,
            "refit": a.refit,
            "lead": {k: v["reference"] for k, v in lead_stats.items()},
            **({"refit_lead": {k: v["refit"] for k, v in lead_stats.items()}} if a.refit else {}),
        },
    )
    log.info("compare: wrote %s, %s and %s", out / "dynamics.csv", out / "labels.csv",
             out / "dynamics.json")  # fmt: skip
    return out / "dynamics.csv"


def _spaces(cur: LabelStats, move: LabelStats | None, refit: bool):
    """(space name, summary, vectors, delta summary, delta vectors) for each reported space."""
    yield "reference", cur.summary, cur.vectors, move and move.summary, move and move.vectors
    if refit:
        yield (
            "refit",
            cur.refit_summary,
            cur.refit_vectors,
            move and move.refit_summary,
            move and move.refit_vectors,
        )


def _vector_rows(where: dict, groups: Groups, cur: LabelStats, move, refit: bool) -> list[dict]:
    counts = groups.counts()
    rows = []
    for space, _, vectors, _, deltas in _spaces(cur, move, refit):
        cols = {}
        for key in ("axis", "z"):
            cols[key] = summarize(vectors[key], LEVEL)
            d = deltas[f"delta_{key}"] if deltas else np.full_like(vectors[key], np.nan)
            cols[f"delta_{key}"] = summarize(d, LEVEL)
        pcs = sorted((k for k in vectors if k.startswith("pc")), key=lambda k: int(k[2:]))
        for g, name in enumerate(groups.names):
            row = {"space": space, **where, "vector": name, "role": groups.roles[g]}
            row |= {"category": int(groups.categories[g]), "n_samples": int(counts[g])}
            for key, (value, lo, hi) in cols.items():
                row |= {key: value[g], f"{key}_lo": lo[g], f"{key}_hi": hi[g]}
            row |= {k: vectors[k][0, g] for k in pcs}
            rows.append(row)
    return rows


def _label_rows(where: dict, cur: LabelStats, move, refit: bool) -> list[dict]:
    rows = []
    for space, summary, _, deltas, _ in _spaces(cur, move, refit):
        for stat, values in (summary | (deltas or {})).items():
            value, lo, hi = summarize(values, LEVEL)
            rows.append(
                {"space": space, **where, "statistic": stat, "value": value, "lo": lo, "hi": hi}
            )
    return rows


def _lead(cur: LabelStats, move) -> dict:
    out = {}
    for space, summary, _, deltas, _ in _spaces(cur, move, True):
        out[space] = {k: _interval(v) for k, v in (summary | (deltas or {})).items()}
    return out


# --- across models -------------------------------------------------------------------------------


def analyzed(cfg: Study) -> tuple[SavedSpace, dict]:
    """An analyzed run's space.h5 and summary.json, read back (for comparisons across models)."""
    out = cfg.path("analysis")
    path = out / "space.h5"
    if not path.is_file() or not (out / "summary.json").is_file():
        raise PersonaDynamicsError(
            f"{path}: run `persona-dynamics analyze` for run '{cfg.run_name}' first"
        )
    return read_space(path), read_json(out / "summary.json", obj=True)


def run_across(cfg: Study, other: Study) -> Path:
    """Two runs' spaces side by side: role-loading correlation and the paper's statistics."""
    (a, sum_a), (b, sum_b) = analyzed(cfg), analyzed(other)
    run_a, run_b = cfg.run_name, other.run_name
    paired = (
        np.array_equal(a.questions, b.questions)
        and a.weights.shape == b.weights.shape
        and np.array_equal(a.weights, b.weights)
    )
    shared = len(set(a.names) & set(b.names))
    if shared < 3:
        raise PersonaDynamicsError(
            f"runs '{run_a}' and '{run_b}' share {shared} role vectors; loadings need 3 or more"
        )
    pairs = {(la, min(b.layers, key=lambda lb: abs(b.depth(lb) - a.depth(la)))) for la in a.layers}
    pairs.add((a.lead, b.lead))
    rows = []
    for la, lb in sorted(pairs):
        load_a, load_b = a.per_layer[la].loadings, b.per_layer[lb].loadings
        corr = loading_agreement(a.names, load_a, b.names, load_b)
        for j in range(LOADING_PCS):
            rows.append(
                {"layer_a": la, "layer_b": lb, "depth_a": a.depth(la), "depth_b": b.depth(lb),
                 "pc": j + 1, **_interval(corr[:, j])}
            )  # fmt: skip
    lead_pc1 = next(r for r in rows if (r["layer_a"], r["layer_b"], r["pc"]) == (a.lead, b.lead, 1))
    side = {}
    for stat in sum_a["per_layer"][str(a.lead)]:
        side[stat] = {
            run_a: sum_a["per_layer"][str(a.lead)][stat],
            run_b: sum_b["per_layer"][str(b.lead)].get(stat),
        }
    report = {
        "runs": [run_a, run_b],
        "models": [a.attrs.get("model"), b.attrs.get("model")],
        "lead_layers": [a.lead, b.lead],
        "paired": paired,
        "shared_vectors": shared,
        "loading_correlation": rows,
        "side_by_side": side,
        "paper": [
            {"statistic": "role-loading correlation on PC1 between models (lead layers)",
             **{k: lead_pc1[k] for k in ("value", "lo", "hi")}, "paper": "> 0.92"}
        ],
    }  # fmt: skip
    out = cfg.path("analysis") / "across"
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / f"{run_b}.csv", rows, parquet=False)
    write_json(out / f"{run_b}.json", report)
    log.info("compare: wrote %s", out / f"{run_b}.json")
    return out / f"{run_b}.json"
