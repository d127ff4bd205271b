"""A planted analysis run for the report tests: real stores through the real analyze and compare.

Four stages move every role toward the Assistant along the planted axis by known steps
(`SHIFT`); a persona adapter on the final checkpoint moves the default Assistant halfway to
`ADAPTER_ROLE` on the reference text and all the way on its own text (placed by
`adapters.place.place`); a second run (the same data isometrically embedded in a wider
model) gives an across-models comparison.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from persona_dynamics.analysis import run_analyze, run_compare
from persona_dynamics.config import Study
from persona_dynamics.store import write_store

from helpers.planted import Planted, planted
from helpers.study import make_study

LAYERS = [0, 2, 3]  # of a 4-layer model; 2 leads
SHIFT = {"base": -3.0, "sft": -2.0, "dpo": -1.0, "instruct": 0.0}
ADAPTER, ADAPTER_ROLE = "pirate-lora", "role00"


def data() -> Planted:
    """Small planted persona data (8 roles, 12 questions)."""
    return planted(d=24, n_roles=8, n_questions=12, n_prompts=4, seed=5)


def _acts(p: Planted, label: str, hidden: int | None, move: float = 0.5) -> np.ndarray:
    roles = p.roles != "default"
    acts = p.acts.astype(np.float64)
    if label == ADAPTER:
        target = p.means[f"{ADAPTER_ROLE}@3"] - p.means["default"]
        acts = acts + np.where(roles[:, None], 0.0, move * target)
    else:
        acts = acts + np.where(roles[:, None], SHIFT[label] * p.axis, 0.0)
    if hidden:  # an isometric embedding into a wider model
        q = np.linalg.qr(np.random.default_rng(2).normal(size=(hidden, acts.shape[1])))[0]
        acts = acts @ q.T
    rot = np.linalg.qr(np.random.default_rng(9).normal(size=(acts.shape[1],) * 2))[0]
    return np.stack([0.5 * acts, acts, acts @ rot], axis=1)


def study(root: Path, run: str = "planted", scored: bool = True, adapter: bool = True) -> Study:
    """The run's config (scored by a judge or not, with or without the adapter label)."""
    ckpts = [{"label": k, "model": f"toy/{k}"} for k in SHIFT]
    if adapter:
        ckpts.append({"label": ADAPTER, "model": "toy/instruct", "adapter": "adapters/pirate"})
    return make_study(
        root,
        run_name=run,
        reference="instruct",
        checkpoints=ckpts,
        **({"judge": {"backend": "local", "model": "toy-judge"}} if scored else {}),
        analysis={"bootstrap": 20, "n_components": 5, "refit": True, "min_samples": 5},
    )


def build(root: Path, scored: bool = True, adapter: bool = True, across: bool = True) -> Study:
    """Write the stores (and scores), run analyze and compare; return the config."""
    import json

    p = data()
    cfg = study(root, scored=scored, adapter=adapter)
    other = study(root, run="wide", scored=scored, adapter=False)
    attrs = {"model": "toy", "n_layers": 4, "aggregation": "mean", "complete": True}
    attrs |= {"transcripts_digest": "T", "tokens_digest": "K", "revision": "main"}
    for c, hidden in [(cfg, None)] + ([(other, 40)] if across else []):
        for ck in c.checkpoints:
            acts = _acts(p, ck.label, hidden)
            path = root / "activations" / c.run_name / f"{ck.label}.h5"
            who = {"model": ck.model, "adapter": ck.adapter, "hidden_size": acts.shape[2]}
            write_store(path, acts, p.keys(), LAYERS, attrs | who)
        if scored:
            out = root / "scores" / c.run_name
            out.mkdir(parents=True, exist_ok=True)
            for role in sorted(set(p.roles) - {"default"}):
                lines = [
                    json.dumps(
                        {
                            "system_prompt_idx": k[1],
                            "question_idx": k[2],
                            "rollout_idx": 0,
                            "score": s,
                            "judge": "toy",
                            "raw": str(s),
                        }
                    )
                    + "\n"
                    for k, s in zip(p.keys(), p.scores, strict=True)
                    if k[0] == role
                ]
                (out / f"{role}.jsonl").write_text("".join(lines))
        run_analyze(c)
    run_compare(cfg)
    if adapter:
        from persona_dynamics.adapters.place import own_text_store, run_place

        own = p.roles == "default"
        keys = [k for k, m in zip(p.keys(), own, strict=True) if m]
        acts = _acts(p, ADAPTER, None, move=1.0)[own]
        ck = cfg.checkpoint(ADAPTER)
        who = {"model": ck.model, "adapter": ck.adapter}
        write_store(own_text_store(cfg, ADAPTER), acts, keys, LAYERS, attrs | who)
        run_place(cfg)
    if across:
        run_compare(cfg, across_models=other)
    return cfg
