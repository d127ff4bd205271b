"""Per-turn drift slopes: least squares of projection on turn, a bootstrap over conversations.

Pure functions of the turns table; `drift/run.py` reads and writes.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95


def slope(turns: np.ndarray, values: np.ndarray) -> float:
    """The least-squares slope of values on turns (NaN with fewer than two distinct turns)."""
    if len(np.unique(turns)) < 2:
        return float("nan")
    t = turns - turns.mean()
    return float((t * (values - values.mean())).sum() / (t * t).sum())


def slope_interval(
    by_conversation: dict[str, tuple[np.ndarray, np.ndarray]], bootstrap: int, seed: int
) -> tuple[float, float, float]:
    """(slope, lo, hi) over all conversations' (turns, values), resampling whole conversations."""
    names = sorted(by_conversation)
    t = np.concatenate([by_conversation[n][0] for n in names])
    v = np.concatenate([by_conversation[n][1] for n in names])
    point = slope(t, v)
    if bootstrap == 0 or len(names) < 2:
        return point, point, point
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(bootstrap):
        pick = [names[i] for i in rng.integers(0, len(names), len(names))]
        tt = np.concatenate([by_conversation[n][0] for n in pick])
        reps.append(slope(tt, np.concatenate([by_conversation[n][1] for n in pick])))
    a = (1 - LEVEL) / 2
    return point, float(np.nanquantile(reps, a)), float(np.nanquantile(reps, 1 - a))


def slope_rows(rows: list[dict], bootstrap: int, seed: int) -> list[dict]:
    """`label, domain, layer, slope, slope_lo, slope_hi, n_conversations` per group of rows."""
    groups: dict[tuple, dict[str, list]] = {}
    for r in rows:
        g = groups.setdefault((r["label"], r["domain"], r["layer"]), {})
        if np.isfinite(r["projection"]):  # an empty reply's turn has no projection
            g.setdefault(r["conversation"], []).append((r["turn"], r["projection"]))
    out = []
    for (label, domain, layer), convs in sorted(groups.items()):
        data = {n: (np.array([t for t, _ in x], float), np.array([p for _, p in x], float))
                for n, x in convs.items()}  # fmt: skip
        s, lo, hi = slope_interval(data, bootstrap, seed)
        out.append({"label": label, "domain": domain, "layer": layer, "slope": s,
                    "slope_lo": lo, "slope_hi": hi, "n_conversations": len(convs)})  # fmt: skip
    return out
