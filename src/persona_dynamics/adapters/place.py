"""Where persona adapters sit in the reference persona space, measured on two kinds of text.

An adapter is a checkpoint label with `adapter = "path"`; its base is the checkpoint with the same
model and revision and no adapter. Two measurements, each labelled in every output:

- `reference-text`: the adapted model reads the reference transcripts every checkpoint reads (the
  ordinary capture of its label): how the adapter changes the representation of fixed text;
- `own-text`: the adapted model answers the default Assistant's prompts and the shared questions
  itself, and its own answers are captured: where its self sits. That generate and capture is
  stage work the pipeline runs before `place` (`pipeline.run_own_text`, with `own_text_config`);
  the transcripts go to the adapter label's own directory, with `adapter.json` naming the weights'
  digest, so a retrained adapter is refused rather than measured on its predecessor's text.

Per adapter, text and layer, from its default vector (the mean over default-prompt responses):
`axis_shift` = p(adapter default) - p(base default) on the reference's Assistant Axis (raw units;
p as in dynamics.py), `axis` and `axis_base` themselves, coordinates `pc1..pc3` on the reference's
components, and the nearest role vectors by cosine in the persona space (between coordinates on all
of the reference's fitted components). Every number has a 95% bootstrap interval over questions,
paired with the reference's replicates (the same question weights, as `compare` uses);
`nearest_share` is the fraction of replicates whose nearest vector is the point estimate's.

Outputs in `<output_root>/analysis/<run>/`: `adapters.csv` (label, base, text, layer, statistic,
value, lo, hi), `adapters_nearest.csv` (label, text, layer, rank, vector, role, cos, cos_lo, cos_hi)
and `adapters.json` (the lead layer, per label and text).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from persona_dynamics.config import Study
from persona_dynamics.dynamics import summarize
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.files import write_json, write_table
from persona_dynamics.lock import hold, lock_file
from persona_dynamics.readers import (
    analyzed_layers,
    check_same_samples,
    layer_sums,
    open_store,
    sample_groups,
    sample_roles,
)
from persona_dynamics.roles import DEFAULT
from persona_dynamics.space import GroupSums, PersonaSpace, bootstrap_weights, frames
from persona_dynamics.spacefile import LEVEL, TARGET
from persona_dynamics.store import ActivationStore, activations_path

log = logging.getLogger(__name__)

REFERENCE_TEXT = "reference-text"
OWN_TEXT = "own-text"
OWN_TEXT_MARKER = "adapter.json"  # beside own-text transcripts: which adapter weights wrote them
PCS = 3  # coordinates reported per adapter
NEAREST = 5  # nearest role vectors reported per adapter


# --- which labels ---------------------------------------------------------------------------------


def adapter_labels(cfg: Study) -> list[str]:
    """The checkpoint labels that carry an adapter, in config order."""
    return [c.label for c in cfg.checkpoints if c.adapter]


def base_of(cfg: Study, label: str) -> str:
    """The label of an adapter's base: same model and revision, no adapter."""
    ckpt = cfg.checkpoint(label)
    if not ckpt.adapter:
        raise PersonaDynamicsError(f"checkpoint '{label}' has no adapter")
    for c in cfg.checkpoints:
        if not c.adapter and (c.model, c.revision) == (ckpt.model, ckpt.revision):
            return c.label
    raise PersonaDynamicsError(
        f"adapter '{label}' has no base checkpoint in the config: add one with model "
        f"'{ckpt.model}', revision '{ckpt.revision}' and no adapter"
    )


# --- own text ------------------------------------------------------------------------------------


def own_text_store(cfg: Study, label: str) -> Path:
    """`<output_root>/activations/<run>/own-text/<label>.h5`."""
    return cfg.path("activations", OWN_TEXT, f"{label}.h5")


def own_text_config(cfg: Study, label: str) -> Study:
    """The study as the adapter generates: default prompts only, its own label, own-text store."""
    ref = cfg.checkpoint(cfg.reference_label)
    ckpts = [ref] if label == ref.label else [ref, cfg.checkpoint(label)]
    return cfg.model_copy(
        update={
            "checkpoints": ckpts,
            "roles": cfg.roles.model_copy(update={"include": [DEFAULT], "include_default": True}),
            "generation": cfg.generation.model_copy(update={"checkpoint": label, "shard": None}),
            "capture": cfg.capture.model_copy(
                update={
                    "checkpoints": [label],
                    "output_dir": own_text_store(cfg, label).parent,
                    "shard": None,
                }
            ),
        }
    )


def adapter_digest(adapter: str | Path) -> str:
    """Content hash of an adapter's weights (16 hex digits), to tell a retrained one apart."""
    path = Path(adapter) / "adapter_model.safetensors"
    if not path.is_file():
        raise PersonaDynamicsError(f"{adapter}: no adapter_model.safetensors; train it first")
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()[:16]


# --- measurement ---------------------------------------------------------------------------------


def default_vectors(store: ActivationStore, layer: int, questions, weights) -> np.ndarray:
    """A store's default vector per frame: (1 + B, d), the point estimate first."""
    index = np.where((sample_roles(store) == DEFAULT) & (store.n_tokens > 0), 0, -1)
    if not (index == 0).any():
        raise PersonaDynamicsError(f"{store.path}: no default-prompt samples to place")
    sums: GroupSums = layer_sums(store, layer, index, 1, questions)
    point = sums.vectors()[0][None, 0]
    if not len(weights):
        return point
    return np.concatenate([point, sums.vectors(weights)[0][:, 0]])


def measure(space: PersonaSpace | None, roles: np.ndarray, adapter, base) -> dict[str, np.ndarray]:
    """One frame: axis shift, axis projections, PC coordinates, cosine to each role vector (V,)."""
    nan = {k: np.nan for k in ("axis_shift", "axis", "axis_base")}
    nan |= {f"pc{j + 1}": np.nan for j in range(PCS)}
    if space is None:
        return nan | {"cos": np.full(len(roles), np.nan)}
    a, b = space.project_axis(adapter), space.project_axis(base)
    coords = space.transform(np.vstack([adapter, roles]))
    pcs = {f"pc{j + 1}": coords[0, j] if j < coords.shape[1] else np.nan for j in range(PCS)}
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (
            coords[1:]
            @ coords[0]
            / (np.linalg.norm(coords[1:], axis=1) * np.linalg.norm(coords[0]))
        )
    return {"axis_shift": a - b, "axis": a, "axis_base": b, **pcs, "cos": cos}


def _stack(rows: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.array([r[k] for r in rows], dtype=float) for k in rows[0]}


def nearest(cos: np.ndarray, names, roles, k: int = NEAREST) -> list[dict]:
    """The k role vectors closest to the adapter (point estimate), with cosine intervals."""
    value, lo, hi = summarize(cos, LEVEL)
    order = [int(i) for i in np.argsort(-np.nan_to_num(value, nan=-np.inf))[:k]]
    return [
        {"rank": r + 1, "vector": names[i], "role": roles[i], "cos": value[i],
         "cos_lo": lo[i], "cos_hi": hi[i]}
        for r, i in enumerate(order)
    ]  # fmt: skip


def nearest_share(cos: np.ndarray) -> float:
    """Fraction of replicates whose nearest vector is the point estimate's (NaN: none valid)."""
    top = np.nanargmax(cos[0])
    ok = np.isfinite(cos[1:]).any(axis=1)
    if not ok.any():
        return np.nan
    return float(np.mean(np.nanargmax(cos[1:][ok], axis=1) == top))


# --- the stage -----------------------------------------------------------------------------------


def open_text(cfg: Study, label: str, text: str) -> ActivationStore:
    """A label's store of one kind of text, checked complete and aggregated."""
    own = text == OWN_TEXT
    path = own_text_store(cfg, label) if own else activations_path(cfg, label)
    if not path.is_file():
        how = "`adapters place`" if own else "`capture`"
        raise PersonaDynamicsError(f"{path}: no {text} activations of '{label}'; run {how}")
    return open_store(own_text_config(cfg, label) if own else cfg, label)


def run_place(
    cfg: Study, labels: list[str] | None = None, texts: tuple[str, ...] = (REFERENCE_TEXT, OWN_TEXT)
) -> Path:
    """Place every adapter label (or the named ones) in the reference space; write the tables."""
    with hold(lock_file(cfg.path("analysis"), "analysis")):
        return _place(cfg, labels, texts)


def _place(cfg: Study, labels: list[str] | None, texts: tuple[str, ...]) -> Path:
    """Place under the analysis directory's lock."""
    a = cfg.analysis
    labels = labels or adapter_labels(cfg)
    if not labels:
        raise PersonaDynamicsError("no checkpoint has an adapter: nothing to place")
    if cfg.checkpoint(cfg.reference_label).adapter:
        raise PersonaDynamicsError(
            f"the reference checkpoint '{cfg.reference_label}' is an adapter; set `reference` "
            "to a plain checkpoint (the reference defaults to the last one listed)"
        )
    bases = {label: base_of(cfg, label) for label in labels}
    placed = [(label, text) for label in labels for text in texts]
    out = cfg.path("analysis")
    out.mkdir(parents=True, exist_ok=True)
    stat_rows, near_rows, lead_report = [], [], {}
    stores: dict[tuple[str, str], ActivationStore] = {}
    try:  # each file opened once: h5py must not see one file open twice
        ref_store = stores[cfg.reference_label, REFERENCE_TEXT] = open_store(
            cfg, cfg.reference_label
        )
        for key in [*placed, *((b, REFERENCE_TEXT) for b in bases.values())]:
            if key not in stores:
                stores[key] = open_text(cfg, *key)
                if key[1] == REFERENCE_TEXT:
                    check_same_samples(ref_store, stores[key])
        groups = sample_groups(cfg, ref_store)
        layers, lead = analyzed_layers(cfg, ref_store)
        questions = np.unique(ref_store.question_idx)
        weights = bootstrap_weights(len(questions), a.bootstrap, a.seed)
        names, owners = groups.names[:-1], groups.roles[:-1]
        for layer in tqdm(layers, desc="place adapters"):
            defaults = {
                k: default_vectors(st, layer, questions, weights) for k, st in stores.items()
            }
            ref_sums = layer_sums(ref_store, layer, groups.index, len(groups.names), questions)
            rows = {key: [] for key in placed}
            for i, f in enumerate(frames(ref_sums, groups, weights, a.n_components, TARGET)):
                for (label, text), found in rows.items():
                    base = defaults[bases[label], REFERENCE_TEXT][i]
                    found.append(measure(f.space, f.vectors[:-1], defaults[label, text][i], base))
            for (label, text), found in rows.items():
                stats = _stack(found)
                cos = stats.pop("cos")
                where = {"label": label, "base": bases[label], "text": text, "layer": layer}
                for name, values in stats.items():
                    value, lo, hi = summarize(values, LEVEL)
                    stat_rows.append(
                        {**where, "statistic": name, "value": value, "lo": lo, "hi": hi}
                    )
                share = nearest_share(cos)
                stat_rows.append({**where, "statistic": "nearest_share", "value": share})
                near = nearest(cos, names, owners)
                near_rows += [{**where, **n} for n in near]
                if layer == lead:
                    report = {s: dict(zip(("value", "lo", "hi"), summarize(v, LEVEL), strict=True))
                              for s, v in stats.items()}  # fmt: skip
                    entry = lead_report.setdefault(label, {"base": bases[label], "texts": {}})
                    entry["texts"][text] = report | {"nearest_share": share, "nearest": near}
    finally:
        for st in stores.values():
            st.close()
    write_table(out / "adapters.csv", stat_rows)
    write_table(out / "adapters_nearest.csv", near_rows)
    write_json(
        out / "adapters.json",
        {
            "run": cfg.run_name,
            "reference": cfg.reference_label,
            "lead_layer": lead,
            "bootstrap": a.bootstrap,
            "level": LEVEL,
            "scored": groups.scored,
            "adapters": lead_report,
        },
    )
    log.info("placed %d adapter(s): %s", len(labels), out / "adapters.json")
    return out / "adapters.json"
