"""How faithfully an adapter answers its persona's held-out survey items, per category.

Likert items: the point the adapter names (its number or scale word, whichever comes first) must
equal the persona's (exact) or be one point off (within one); stance agreement compares the sides
of the scale's midpoint (agree / neutral / disagree). An answer naming no point counts as a miss
and is counted as unparsed. Free-text items: chrF (sacrebleu) of the answers against the trained
completions. The adapter answers greedily, so the numbers are a function of the weights.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from persona_dynamics.adapters.train import HELDOUT, adapter_checkpoint, adapter_dir, selected
from persona_dynamics.config import Adapters, Study
from persona_dynamics.errors import PersonaDynamicsError, require
from persona_dynamics.files import write_text
from persona_dynamics.jsonl import read_rows
from persona_dynamics.lock import hold, lock_file

log = logging.getLogger(__name__)

FIDELITY = "fidelity.json"
ANSWERS = "answers.jsonl"
ALL = "all"


def likert_point(text: str, scale: list[str] | tuple[str, ...]) -> int | None:
    """The first scale point an answer names, by its number (1..n) or its word; None if none.

    Longer words are tried first at each position, so "Strongly agree" is not read as "Agree";
    word boundaries keep "Disagree" from reading as "agree".
    """
    words = [w.lower() for w in scale]
    alts = [re.escape(w) for w in sorted(words, key=len, reverse=True)] + [r"\d+"]
    for m in re.finditer(r"\b(?:" + "|".join(alts) + r")\b", text.lower()):
        tok = m.group(0)
        if not tok.isdigit():
            return words.index(tok) + 1
        if 1 <= int(tok) <= len(scale):
            return int(tok)
    return None


def stance(point: int, n_points: int) -> int:
    """-1, 0 or +1: which side of the scale's midpoint a point lies on."""
    mid = (n_points + 1) / 2
    return (point > mid) - (point < mid)


def likert_scores(items: list[tuple[int, int | None, int]]) -> dict[str, float | None]:
    """Exact, within-one and stance agreement over (truth, answered point or None, n_points)."""
    n = len(items)
    hits = {
        "likert_exact": sum(g == t for t, g, _ in items),
        "likert_within_one": sum(g is not None and abs(g - t) <= 1 for t, g, _ in items),
        "stance": sum(g is not None and stance(g, k) == stance(t, k) for t, g, k in items),
        "unparsed": sum(g is None for _, g, _ in items),
    }
    return {k: v / n if n else None for k, v in hits.items()}


def score(records: list[dict], answers: list[str]) -> dict[str, dict]:
    """Fidelity per category and over all items (key "all"); None where a category has no items.

    `records` are held-out rows (`category`, `answer`, `scale`, `reference`); `answers` the
    adapter's texts in the same order.
    """
    if len(records) != len(answers):
        raise ValueError(f"{len(records)} held-out items but {len(answers)} answers")
    sacrebleu = require("train", "sacrebleu")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r["category"], []).append(i)
    groups[ALL] = list(range(len(records)))
    out = {}
    for cat, idx in sorted(groups.items(), key=lambda kv: (kv[0] == ALL, kv[0])):
        likert = [
            (
                records[i]["answer"],
                likert_point(answers[i], records[i]["scale"]),
                len(records[i]["scale"]),
            )
            for i in idx
            if records[i]["scale"] is not None
        ]
        text = [i for i in idx if records[i]["scale"] is None]
        refs = [[records[i]["reference"] for i in text]]
        chrf = sacrebleu.corpus_chrf([answers[i] for i in text], refs).score if text else None
        out[cat] = {
            "n_likert": len(likert),
            **likert_scores(likert),
            "n_text": len(text),
            "chrf": chrf,
        }
    return out


def evaluate_adapter(cfg: Study, name: str) -> Path | None:
    """Answer an adapter's held-out items greedily, score them; write fidelity.json beside it."""
    from persona_dynamics.generation.hf import HFGenerator
    from persona_dynamics.generation.requests import Request, Sampling

    out = adapter_dir(cfg, name)
    records = read_rows(out / HELDOUT) if (out / HELDOUT).exists() else None
    if records is None:
        raise PersonaDynamicsError(f"{out}: no {HELDOUT}; train the adapter first")
    if not records:
        log.warning("adapter %s has no held-out survey items; nothing to evaluate", name)
        return None
    opts = cfg.adapters or Adapters()
    gen = HFGenerator(
        adapter_checkpoint(cfg, name), opts.device, opts.dtype, cfg.generation.batch_tokens
    )
    requests = [Request((i,), tuple(r["messages"]), (0,), 0) for i, r in enumerate(records)]
    sampling = Sampling(temperature=0.0, max_tokens=opts.eval_max_tokens)
    answers = [""] * len(records)
    try:
        for batch in gen.generate(requests, sampling):
            for res in batch:
                answers[res.request.id[0]] = res.response
    finally:
        gen.close()
    scores = score(records, answers)
    rows = [
        {**r, "response": a, "point": likert_point(a, r["scale"]) if r["scale"] else None}
        for r, a in zip(records, answers, strict=True)
    ]
    write_text(out / ANSWERS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    path = write_text(out / FIDELITY, json.dumps(scores, indent=2) + "\n")
    log.info("adapter %s fidelity: %s", name, scores[ALL])
    return path


def run_adapters_evaluate(cfg: Study, names: list[str] | None = None) -> Path:
    """Evaluate every trained adapter of the config (or the named ones)."""
    with hold(lock_file(cfg.path("adapters"), "adapters")):
        for spec in selected(cfg, names):
            evaluate_adapter(cfg, spec.name)
    return cfg.path("adapters")
