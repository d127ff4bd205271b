"""Activation stores read for analysis: the checked stores, their rows' roles, scores and groups.

What `analyze`, `compare` and `place` share when they read `activations/<run>/<label>.h5`: a
store opened and refused when incomplete or per-token, the reference's role vectors (judge scores
applied), the analyzed layers and the lead layer, and each layer streamed once into
per-(question, vector) sums.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from persona_dynamics.config import Checkpoint, Study
from persona_dynamics.errors import PersonaDynamicsError, located
from persona_dynamics.layers import middle as layer_middle
from persona_dynamics.layers import resolve
from persona_dynamics.models import is_local
from persona_dynamics.roles import DEFAULT
from persona_dynamics.space import Groups, GroupSums, make_groups
from persona_dynamics.store import ActivationStore, activations_path
from persona_dynamics.transcripts import scores_path

log = logging.getLogger(__name__)

UNSCORED_NOTE = "no judge scores: one vector per role from all of its samples"


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
    try:
        check_identity(store, cfg.checkpoint(label))
    except PersonaDynamicsError:
        store.close()
        raise
    return store


COMMIT = re.compile(r"[0-9a-f]{40}")


def same_place(recorded: str | None, configured: str | None) -> bool:
    """Whether a recorded model or adapter is the configured one: the same text, or the same
    local directory written another way (relative, absolute, through a link)."""
    if recorded == configured:
        return True
    if recorded is None or configured is None or not is_local(configured):
        return False
    return Path(recorded).resolve() == Path(configured).resolve()


def check_identity(store: ActivationStore, ckpt: Checkpoint) -> None:
    """Refuse a store captured from another checkpoint than the config's for its label: model,
    revision, adapter, and the commit when the config pins one. A store that does not record its
    model (not written by `capture`) is not checked on it nor on its adapter; one without a
    revision not on that."""
    a = store.attrs
    diff = []
    if a.get("model") is not None and not same_place(a["model"], ckpt.model):
        diff.append(f"model {a['model']!r}, the config's {ckpt.model!r}")
    if a.get("revision") is not None and a["revision"] != ckpt.revision:
        diff.append(f"revision {a['revision']!r}, the config's {ckpt.revision!r}")
    if a.get("model") is not None and not same_place(a.get("adapter"), ckpt.adapter):
        diff.append(f"adapter {a.get('adapter')!r}, the config's {ckpt.adapter!r}")
    if a.get("model") is not None and a.get("intervention") != ckpt.intervention:
        diff.append(f"intervention {a.get('intervention')!r}, the config's {ckpt.intervention!r}")
    commit = a.get("commit")
    if commit and COMMIT.fullmatch(ckpt.revision) and commit != ckpt.revision:
        diff.append(f"commit {commit!r}, the config's {ckpt.revision!r}")
    if diff:
        raise PersonaDynamicsError(
            f"{store.path}: captured from another checkpoint than '{ckpt.label}' "
            f"({'; '.join(diff)}); capture '{ckpt.label}' again (delete this file) or fix the "
            "config"
        )


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
    from persona_dynamics.scores import check_scores_judge, load_scores

    if cfg.judge is None:
        log.warning("%s; add a [judge] section and run `judge` to filter by role expression",
                    UNSCORED_NOTE)  # fmt: skip
        return None
    table = load_scores(scores_path(cfg))
    if table:
        check_scores_judge(cfg)
    if not table:
        raise PersonaDynamicsError(
            f"{cfg.path('scores')}: no scores; run `persona-dynamics judge`, or drop [judge] "
            "from the config to analyze without scores"
        )
    rows = zip(store.keys(), sample_roles(store), strict=True)
    return np.array([np.nan if r == DEFAULT or table.get(k) is None else table[k] for k, r in rows])


def check_selection(cfg: Study, store: ActivationStore) -> None:
    """Refuse a store whose roles or questions are not the ones the config selects (checked when
    the config narrows them: roles.include, roles.question_count)."""
    if not cfg.roles.include and cfg.roles.question_count is None:
        return
    from persona_dynamics.transcripts import selection

    _, questions = selection(cfg)
    have = set(store.roles)
    extra, missing = sorted(have - set(questions)), sorted(set(questions) - have)
    if extra or (missing and cfg.roles.include):
        what = "; ".join(
            f"{n} {kind}: {', '.join(names[:5])}"
            for kind, names in (("not selected", extra), ("selected but absent", missing))
            if names and (n := len(names))
        )
        raise PersonaDynamicsError(
            f"{store.path}: its roles are not the config's selection (roles.include: {what}); "
            "capture again with this selection, or change roles.include back"
        )
    ids = {role: {q.id for q in qs} for role, qs in questions.items()}
    for role, q in zip(sample_roles(store), store.question_idx, strict=True):
        if int(q) not in ids[role]:
            raise PersonaDynamicsError(
                f"{store.path}: holds question {int(q)} of role {role}, outside the config's "
                f"selection (roles.question_count = {cfg.roles.question_count}); capture again "
                "with this selection, or change roles.question_count back"
            )


def sample_groups(cfg: Study, store: ActivationStore) -> Groups:
    """The role vectors of the study, from the reference store's rows and the judge's scores."""
    a = cfg.analysis
    check_selection(cfg, store)
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
    """The layers to analyze (analysis.layers, else all captured) and the lead layer (default:
    the middle one)."""
    spec, n = cfg.analysis.layers, store.attrs.get("n_layers")
    depth = int(n) if n else max(store.layers) + 1  # a store that lacks its model's depth
    layers = resolve(spec, depth, "analysis.layers") if spec else sorted(store.layers)
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
    middle = layer_middle(int(n)) if n else layers[len(layers) // 2]
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
        check_finite(store, layer, rows, x)
        sums.add(index[rows], store.question_idx[rows], x)
    return sums


def check_finite(store: ActivationStore, layer: int, rows: slice, x: np.ndarray) -> None:
    """Refuse NaN or inf activations, naming the store and the row's key (an empty response's
    row is NaN by contract and is never used)."""
    bad = ~np.isfinite(x).all(axis=1) & (store.n_tokens[rows] > 0)
    if bad.any():
        row = rows.start + int(np.flatnonzero(bad)[0])
        raise PersonaDynamicsError(
            f"{store.path}: NaN or inf activations at layer {layer} in {int(bad.sum())} row(s), "
            f"the first ({store.key(row)}); capture this label again"
        )


def stage_labels(cfg: Study) -> list[str]:
    """Labels in stage order (checkpoint.stage, else position); capture.checkpoints narrows them."""
    order = sorted(
        enumerate(cfg.checkpoints), key=lambda ic: ic[0] if ic[1].stage is None else ic[1].stage
    )
    keep = set(cfg.capture.checkpoints) | {cfg.reference_label}
    return [c.label for _, c in order if not cfg.capture.checkpoints or c.label in keep]
