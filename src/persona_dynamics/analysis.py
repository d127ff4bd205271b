"""The analysis stages' I/O edge: activation stores in; persona space and dynamics files out.

`run_analyze(cfg)` fits the reference label's persona space at every analyzed layer (default:
every captured layer) and writes `space.h5` and `summary.json`. `run_compare(cfg)` projects every
label into that space and writes `dynamics.csv`, `labels.csv` (plus `.parquet` twins when pyarrow
is importable) and `dynamics.json`. `run_compare(cfg, across_models=other)` sets two runs' spaces
side by side (role-loading correlation and the paper's statistics, never projection) and writes
`across/<other run>.json` and `.csv`. All files live in `<output_root>/analysis/<run>/`.

Each layer of each store is streamed once into per-(question, vector) sums (`space.GroupSums`);
the bootstrap over questions (B replicates, seeded, 95% percentile intervals) reuses them.
Without judge scores (no `[judge]` in the config) every role has one vector from all its samples;
outputs say so (`scored` false and a `note`).

Output formats
--------------
space.h5
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

import csv
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from persona_dynamics import __version__
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
from persona_dynamics.errors import PersonaDynamicsError, located
from persona_dynamics.roles import DEFAULT
from persona_dynamics.space import Groups, GroupSums, bootstrap_weights, frames, make_groups
from persona_dynamics.store import ActivationStore, activations_path

log = logging.getLogger(__name__)

LEVEL = 0.95
TARGET = 0.70
POSITION_PCS = 10
UNSCORED_NOTE = "no judge scores: one vector per role from all of its samples"


# --- inputs --------------------------------------------------------------------------------------


def open_store(cfg: Study, label: str) -> ActivationStore:
    """A label's store, refusing incomplete and per-token ones."""
    path = activations_path(cfg, label)
    if not path.is_file():
        raise PersonaDynamicsError(
            f"{path}: no activations for '{label}'; run `persona-dynamics capture` first"
        )
    store = ActivationStore.open(path)
    if store.attrs.get("complete") is False:
        store.close()
        raise PersonaDynamicsError(f"{path}: incomplete store (capture not finished or merged)")
    if store.ragged:
        store.close()
        raise PersonaDynamicsError(
            f"{path}: per-token activations (aggregation 'none'); analysis needs 'mean' or 'last'"
        )
    return store


def sample_roles(store: ActivationStore) -> np.ndarray:
    """Role name of every row."""
    return np.asarray(store.roles, dtype=object)[store.role_codes]


def width(store: ActivationStore) -> int:
    """Hidden size of the stored activations."""
    return store.layer(store.layers[0], rows=[0]).shape[1]


def check_same_samples(ref: ActivationStore, store: ActivationStore) -> None:
    """Refuse a label whose transcripts, tokens, hidden size or rows differ from the reference's."""
    for attr in ("transcripts_digest", "tokens_digest"):
        a, b = ref.attrs.get(attr), store.attrs.get(attr)
        if a != b:
            raise PersonaDynamicsError(
                f"{store.path}: {attr} {b} differs from the reference's {a} ({ref.path}); "
                "every label must be captured on the same transcripts and tokens"
            )
    if width(store) != width(ref):
        raise PersonaDynamicsError(
            f"{store.path}: hidden size {width(store)} differs from the reference's "
            f"{width(ref)} ({ref.path}); compare other models with --across-models"
        )
    same = len(store) == len(ref) and all(
        np.array_equal(getattr(store, f), getattr(ref, f))
        for f in ("system_prompt_idx", "question_idx", "rollout_idx")
    )
    if not same or not np.array_equal(sample_roles(store), sample_roles(ref)):
        raise PersonaDynamicsError(
            f"{store.path}: its {len(store)} samples differ from the reference's {len(ref)} "
            f"({ref.path}); capture every label from the same transcripts"
        )


def sample_scores(cfg: Study, store: ActivationStore) -> np.ndarray | None:
    """Judge score of every row (NaN when none, and for default rows), or None without a judge."""
    from persona_dynamics.judge import load_scores

    if cfg.judge is None:
        log.warning("%s; add a [judge] section and run `judge` to filter by role expression",
                    UNSCORED_NOTE)  # fmt: skip
        return None
    table = load_scores(cfg.path("scores"))
    if not table:
        raise PersonaDynamicsError(
            f"{cfg.path('scores')}: no scores; run `persona-dynamics judge`, or drop [judge] "
            "from the config to analyze without scores"
        )
    rows = zip(store.keys(), sample_roles(store), strict=True)
    return np.array([np.nan if r == DEFAULT or table.get(k) is None else table[k] for k, r in rows])


def sample_groups(cfg: Study, store: ActivationStore) -> Groups:
    """The role vectors of the study, from the reference store's rows and the judge's scores."""
    a = cfg.analysis
    try:
        groups = make_groups(
            sample_roles(store),
            sample_scores(cfg, store),
            a.score_categories,
            a.axis_category,
            a.min_samples,
            usable=store.n_tokens > 0,
        )
    except PersonaDynamicsError as exc:
        raise PersonaDynamicsError(located(store.path, str(exc))) from None
    empty = int((store.n_tokens == 0).sum())
    if empty:
        log.warning("%d sample(s) with an empty response carry no activation; left out", empty)
    for d in groups.dropped:
        log.info("dropped vector %s: %s", d["name"], d["reason"])
    lost = left_out(groups)
    if lost:
        log.warning(
            "%d role(s) have no vector with %d samples and are left out: %s",
            len(lost), a.min_samples, ", ".join(lost),
        )  # fmt: skip
    return groups


def left_out(groups: Groups) -> list[str]:
    """Roles without any kept vector."""
    return sorted({d["role"] for d in groups.dropped} - set(groups.roles))


def analyzed_layers(cfg: Study, store: ActivationStore) -> tuple[list[int], int]:
    """The layers to analyze (config, else all captured) and the lead layer (default: middle)."""
    layers = sorted(cfg.analysis.layers or store.layers)
    missing = [x for x in layers if x not in store.layers]
    if missing:
        raise PersonaDynamicsError(
            f"{store.path}: layer(s) {missing} not captured (captured: {store.layers})"
        )
    lead = cfg.analysis.lead_layer
    if lead is not None:
        if lead not in layers:
            raise PersonaDynamicsError(
                f"analysis.lead_layer {lead} is not an analyzed layer (analyzed: {layers})"
            )
        return layers, lead
    n = store.attrs.get("n_layers")
    middle = int(n) // 2 if n else layers[len(layers) // 2]
    lead = min(layers, key=lambda x: (abs(x - middle), x))
    if lead != middle:
        log.warning("the middle layer %d was not analyzed; leading with layer %d", middle, lead)
    return layers, lead


def layer_sums(
    store: ActivationStore, layer: int, index: np.ndarray, n_groups: int, questions: np.ndarray
) -> GroupSums:
    """Stream a store's layer into per-(question, vector) sums; `index` maps rows to vectors."""
    sums = GroupSums(questions, n_groups, width(store))
    for rows, x in tqdm(store.iter_layer(layer), desc=f"layer {layer}", leave=False):
        sums.add(index[rows], store.question_idx[rows], x)
    return sums


def stage_labels(cfg: Study) -> list[str]:
    """Labels in stage order (checkpoint.stage, else position); capture.checkpoints narrows them."""
    order = sorted(
        enumerate(cfg.checkpoints), key=lambda ic: ic[0] if ic[1].stage is None else ic[1].stage
    )
    keep = set(cfg.capture.checkpoints) | {cfg.reference_label}
    return [c.label for _, c in order if not cfg.capture.checkpoints or c.label in keep]


# --- analyze -------------------------------------------------------------------------------------


def run_analyze(cfg: Study) -> Path:
    """Fit the reference's persona space per layer; write space.h5 and summary.json."""
    a = cfg.analysis
    out = cfg.path("analysis")
    out.mkdir(parents=True, exist_ok=True)
    with open_store(cfg, cfg.reference_label) as store:
        groups = sample_groups(cfg, store)
        layers, lead = analyzed_layers(cfg, store)
        questions = np.unique(store.question_idx)
        weights = bootstrap_weights(len(questions), a.bootstrap, a.seed)
        per_layer: dict[int, dict[str, np.ndarray]] = {}
        path = out / "space.h5"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with h5py.File(tmp, "w") as h5:
                _space_root(h5, cfg, store, groups, layers, lead, questions, weights)
                for layer in tqdm(layers, desc="analyze"):
                    sums = layer_sums(store, layer, groups.index, len(groups.names), questions)
                    ref, point = Reference(groups.names[:-1]), None
                    for f in frames(sums, groups, weights, a.n_components, TARGET):
                        point = f if point is None else point
                        ref.append(f)
                    per_layer[layer] = ref.statistics(POSITION_PCS)
                    _space_layer(h5.create_group(f"layer_{layer}"), point, ref, per_layer[layer])
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        summary = _summary(cfg, store, groups, layers, lead, len(questions), per_layer)
    write_json(out / "summary.json", summary)
    log.info("analyze: wrote %s and %s", path, out / "summary.json")
    return path


def _space_root(h5, cfg: Study, store, groups: Groups, layers, lead, questions, weights) -> None:
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


def _space_layer(g, point, ref: Reference, stats: dict[str, np.ndarray]) -> None:
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


PAPER = {
    "n_vectors": "377 to 463 role vectors (275 roles)",
    "n_pcs_target": "4 to 19 PCs explain 70% of the variance",
    "cos_pc1_axis": "> 0.71 at the middle layer",
    "min_cos_pc1_axis": "> 0.60 at every layer",
    "extreme_distance_pc1": "0.03 from an extreme on PC1",
    "extreme_distance_pc2_10": "0.27 to 0.50 on PCs 2-10",
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
    return {"statistic": statistic, "layer": layer, **_interval(values), "paper": PAPER[key]}


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
    if across_models is not None:
        return run_across(cfg, across_models)
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


class SavedSpace:
    """An analyzed run read back from space.h5 and summary.json (for comparisons across models)."""

    def __init__(self, cfg: Study):
        out = cfg.path("analysis")
        path = out / "space.h5"
        if not path.is_file() or not (out / "summary.json").is_file():
            raise PersonaDynamicsError(
                f"{path}: run `persona-dynamics analyze` for run '{cfg.run_name}' first"
            )
        self.run = cfg.run_name
        self.summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        with h5py.File(path, "r") as h5:
            self.attrs = {k: _plain(v) for k, v in h5.attrs.items()}
            self.names = list(h5["names"].asstr()[:-1])
            self.questions = h5["questions"][:]
            self.weights = h5["weights"][:]
            self.loadings = {}
            for layer in self.attrs["layers"]:
                g = h5[f"layer_{layer}"]
                point = g["loadings"][:, :LOADING_PCS]
                point = np.pad(point, ((0, 0), (0, LOADING_PCS - point.shape[1])), "constant",
                               constant_values=np.nan)  # fmt: skip
                self.loadings[layer] = np.concatenate([point[None], g["boot_loadings"][:]])
        self.layers = list(self.attrs["layers"])
        self.lead = int(self.attrs["lead_layer"])
        self.n_layers = self.attrs.get("n_layers") or (max(self.layers) + 1)

    def depth(self, layer: int) -> float:
        """Relative depth of a layer: (layer + 1) / number of layers."""
        return (layer + 1) / self.n_layers


def _plain(v):
    """An HDF5 attribute as a plain Python value."""
    return v.tolist() if isinstance(v, np.ndarray | np.generic) else v


def run_across(cfg: Study, other: Study) -> Path:
    """Two runs' spaces side by side: role-loading correlation and the paper's statistics."""
    a, b = SavedSpace(cfg), SavedSpace(other)
    paired = (
        np.array_equal(a.questions, b.questions)
        and a.weights.shape == b.weights.shape
        and np.array_equal(a.weights, b.weights)
    )
    shared = len(set(a.names) & set(b.names))
    if shared < 3:
        raise PersonaDynamicsError(
            f"runs '{a.run}' and '{b.run}' share {shared} role vectors; loadings need 3 or more"
        )
    pairs = {(la, min(b.layers, key=lambda lb: abs(b.depth(lb) - a.depth(la)))) for la in a.layers}
    pairs.add((a.lead, b.lead))
    rows = []
    for la, lb in sorted(pairs):
        corr = loading_agreement(a.names, a.loadings[la], b.names, b.loadings[lb])
        for j in range(LOADING_PCS):
            rows.append(
                {"layer_a": la, "layer_b": lb, "depth_a": a.depth(la), "depth_b": b.depth(lb),
                 "pc": j + 1, **_interval(corr[:, j])}
            )  # fmt: skip
    lead_pc1 = next(r for r in rows if (r["layer_a"], r["layer_b"], r["pc"]) == (a.lead, b.lead, 1))
    side = {}
    for stat in a.summary["per_layer"][str(a.lead)]:
        side[stat] = {
            a.run: a.summary["per_layer"][str(a.lead)][stat],
            b.run: b.summary["per_layer"][str(b.lead)].get(stat),
        }
    report = {
        "runs": [a.run, b.run],
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
    write_table(out / f"{b.run}.csv", rows, parquet=False)
    write_json(out / f"{b.run}.json", report)
    log.info("compare: wrote %s", out / f"{b.run}.json")
    return out / f"{b.run}.json"


# --- writing -------------------------------------------------------------------------------------


def _jsonable(obj):
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN and inf as null."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file, then rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_table(path: Path, rows: Iterable[dict], parquet: bool = True) -> None:
    """Write rows as CSV atomically, and as parquet beside it when pyarrow is importable."""
    rows = [_jsonable(r) for r in rows]
    fields = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    if not parquet:
        return
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # optional: the CSV is the contract, parquet a convenience
        return
    target = path.with_suffix(".parquet")
    tmp = target.with_name(f".{target.name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    os.replace(tmp, target)
