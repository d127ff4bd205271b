"""Analysis cost at a chosen scale: streaming sums, and one bootstrap replicate of analyze/compare.

Prints one JSON line. The paper's scale is 275 roles (about 550 vectors), 240 questions, 5 prompts
and hidden 2048 (OLMo-2 1B) or 4096 (7B); the defaults are smaller so that it runs on a laptop.
Sums take questions x vectors x hidden x 8 bytes per label and layer.

    python benchmarks/analysis.py --roles 275 --questions 240 --hidden 2048 --replicates 8
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from persona_dynamics.dynamics import Reference, compare
from persona_dynamics.space import GroupSums, bootstrap_weights, frames, make_groups


def main() -> None:
    """Time each analysis step on random activations of the given shape."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roles", type=int, default=100)
    ap.add_argument("--questions", type=int, default=240)
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--replicates", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    names = [f"r{i}" for i in range(args.roles)] + ["default"]
    per = args.prompts * args.questions
    roles = np.repeat(np.array(names, dtype=object), per)
    questions = np.tile(np.arange(args.questions), len(names) * args.prompts)
    scores = np.where(rng.random(len(roles)) < 0.7, 3.0, 2.0)
    scores[roles == "default"] = np.nan
    groups = make_groups(roles, scores)
    n, chunk = len(roles), 4096

    pool = rng.normal(size=(chunk + 7, args.hidden)).astype(np.float32)  # rows reused, shifted
    t = time.perf_counter()
    sums = GroupSums(np.arange(args.questions), len(groups.names), args.hidden)
    for i in range(0, n, chunk):
        x = pool[i % 7 : i % 7 + min(chunk, n - i)]
        sums.add(groups.index[i : i + chunk], questions[i : i + chunk], x)
    t_sums = time.perf_counter() - t

    w = bootstrap_weights(args.questions, args.replicates, args.seed)
    t = time.perf_counter()
    ref = Reference(groups.names[:-1])
    for f in frames(sums, groups, w):
        ref.append(f)
    t_analyze = (time.perf_counter() - t) / (args.replicates + 1)
    t = time.perf_counter()
    compare("x", ref, frames(sums, groups, w), groups, 10)
    t_compare = (time.perf_counter() - t) / (args.replicates + 1)
    print(
        json.dumps(
            {
                "benchmark": "analysis",
                "samples": n,
                "vectors": len(groups.names),
                "questions": args.questions,
                "hidden": args.hidden,
                "sums_gib": round(sums.sums.nbytes / 2**30, 3),
                "sums_rows_per_s": round(n / t_sums),
                "analyze_s_per_replicate": round(t_analyze, 4),
                "compare_s_per_replicate_per_label": round(t_compare, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
