"""The dose-response table: per setting and role, the judge's score with a bootstrap interval over
questions, the response length, how many response tokens stayed as the unsteered baseline's, and
the capability measured under the same setting (perplexity on held-out text).

Everything here is a pure function of rows already read; `pipeline.run_steer` reads and writes.
"""

from __future__ import annotations

import numpy as np

COLUMNS = [
    "setting", "vector", "layers", "mode", "coefficient", "percentile", "role", "n",
    "score_mean", "score_lo", "score_hi", "length_mean", "same_tokens", "perplexity",
]  # fmt: skip
LEVEL = 0.95


def interval(by_question: dict[int, list[float]], bootstrap: int, seed: int):
    """(mean, lo, hi) of the scores, the interval from resampling questions; NaN when none."""
    qs = sorted(q for q, v in by_question.items() if v)
    if not qs:
        return float("nan"), float("nan"), float("nan")
    sums = np.array([sum(by_question[q]) for q in qs], dtype=float)
    counts = np.array([len(by_question[q]) for q in qs], dtype=float)
    mean = float(sums.sum() / counts.sum())
    if bootstrap == 0 or len(qs) == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(qs), size=(bootstrap, len(qs)))
    w = np.stack([np.bincount(d, minlength=len(qs)) for d in draws])
    reps = (w @ sums) / (w @ counts)
    a = (1 - LEVEL) / 2
    return mean, float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a))


def same_fraction(ids: list[int], baseline: list[int]) -> float:
    """Share of positions (over the longer of the two) where the tokens agree."""
    n = max(len(ids), len(baseline))
    if n == 0:
        return 1.0
    return sum(a == b for a, b in zip(ids, baseline, strict=False)) / n


def role_rows(
    setting: dict,
    transcripts: list[dict],
    scores: dict[tuple, int | None],
    token_ids: dict[tuple, list[int]],
    baseline_ids: dict[tuple, list[int]],
    perplexity: float,
    bootstrap: int,
    seed: int,
) -> list[dict]:
    """One row per role of one setting (`setting`: name, vector, layers, mode, ...)."""
    out = []
    for role in sorted({t["role"] for t in transcripts}):
        rows = [t for t in transcripts if t["role"] == role]
        by_q: dict[int, list[float]] = {}
        for t in rows:
            s = scores.get(key(t))
            if s is not None:
                by_q.setdefault(int(t["question_idx"]), []).append(float(s))
        mean, lo, hi = interval(by_q, bootstrap, seed)
        same = [same_fraction(token_ids[key(t)], baseline_ids[key(t)])
                for t in rows if key(t) in baseline_ids]  # fmt: skip
        out.append({
            **setting, "role": role, "n": len(rows), "score_mean": mean, "score_lo": lo,
            "score_hi": hi, "length_mean": float(np.mean([t["n_tokens"] for t in rows])),
            "same_tokens": float(np.mean(same)) if same else float("nan"),
            "perplexity": perplexity,
        })  # fmt: skip
    return out


def key(row: dict) -> tuple:
    """A transcript's (role, system_prompt_idx, question_idx, rollout_idx)."""
    return (
        row["role"], int(row["system_prompt_idx"]), int(row["question_idx"]),
        int(row["rollout_idx"]),
    )  # fmt: skip
