"""The whole study in order: `run_study(cfg)` runs every stage a config names, each resuming.

Stages are looked up by name so that a study that never trains adapters never imports peft, and
a stage whose config section is absent (no `[judge]`, no `[adapters]`) is skipped with a note.
Timings go to `<output_root>/runs/<run>.json`, which the demo benchmark checks against budgets.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from persona_dynamics import __version__
from persona_dynamics.config import STAGES, Study, dump
from persona_dynamics.errors import PersonaDynamicsError

log = logging.getLogger(__name__)

RUNNERS = {
    "generate": "persona_dynamics.generation.run:run_generate",
    "judge": "persona_dynamics.judge:run_judge",
    "adapters": "persona_dynamics.adapters.train:run_adapters",
    "capture": "persona_dynamics.capture.run:run_capture",
    "analyze": "persona_dynamics.analysis:run_analyze",
    "compare": "persona_dynamics.analysis:run_compare",
    "place": "persona_dynamics.adapters.place:run_place",
    "report": "persona_dynamics.report:run_report",
}


def runner(stage: str):
    """The `run_<stage>(cfg) -> Path` function of a stage."""
    module, name = RUNNERS[stage].split(":")
    return getattr(importlib.import_module(module), name)


def skipped(cfg: Study, stage: str) -> str | None:
    """Why a stage does not apply to this config, or None when it runs."""
    if stage == "judge" and cfg.judge is None:
        return "no [judge] section: analysis will use every sample, unfiltered"
    if stage == "adapters" and (cfg.adapters is None or not cfg.adapters.training):
        return "no [[adapters.training]] entries"
    if stage == "place" and not any(c.adapter for c in cfg.checkpoints):
        return "no checkpoint carries an adapter"
    return None


def run_study(cfg: Study, stages: Iterable[str] | None = None) -> dict[str, Path]:
    """Run the chosen stages (default: the config's) in pipeline order; return their outputs."""
    chosen = list(stages) if stages is not None else list(cfg.stages)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise PersonaDynamicsError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
    outputs: dict[str, Path] = {}
    timings: dict[str, float] = {}
    for stage in (s for s in STAGES if s in chosen):
        reason = skipped(cfg, stage)
        if reason:
            log.info("skipping %s: %s", stage, reason)
            continue
        log.info("stage %s ...", stage)
        t0 = time.perf_counter()
        outputs[stage] = runner(stage)(cfg)
        timings[stage] = round(time.perf_counter() - t0, 2)
        log.info("stage %s done in %.1f s: %s", stage, timings[stage], outputs[stage])
    _record(cfg, outputs, timings)
    return outputs


def _record(cfg: Study, outputs: dict[str, Path], timings: dict[str, float]) -> None:
    """Write what ran, how long each stage took and the resolved config (atomically)."""
    path = cfg.output_root / "runs" / f"{cfg.run_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "run": cfg.run_name,
        "version": __version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": timings,
        "outputs": {k: str(v) for k, v in outputs.items()},
        "config": dump(cfg),
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


# --- the offline demo ----------------------------------------------------------------------------

DEMO_QUESTIONS = 8  # 24 roles x 5 prompts x 8 questions + the default Assistant: ~1,000 transcripts


def demo_config(out: Path, seed: int = 0) -> Study:
    """The demo study: the toy family (built or reused) plus three toy persona adapters."""
    from persona_dynamics import toy
    from persona_dynamics.adapters.demo import toy_training

    family = toy.cached_build(seed)
    link = out / "toy"  # the family beside the outputs, so analysis/demo.toml describes this run
    out.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(family.root.resolve(), target_is_directory=True)
    trainings = toy_training(out / "personas", seed=seed)
    adapters = [
        {
            "label": f"persona-{t.name}",
            "model": str(link / "instruct"),
            "adapter": str(out / "adapters" / "demo" / t.name),
        }
        for t in trainings
    ]
    family = toy.ToyFamily.load(link)
    return toy.study_config(
        family,
        "demo",
        out,
        checkpoints=[{"label": s, "model": str(p)} for s, p in family.checkpoints.items()]
        + adapters,
        roles__question_count=DEMO_QUESTIONS,
        generation={"max_tokens": 96, "batch_tokens": 65536},  # toy answers end by ~75 tokens
        analysis={"bootstrap": 100, "refit": True},
        adapters={"training": [t.model_dump(mode="json") for t in trainings]},
    )


def run_demo(out: Path = Path("outputs"), seed: int = 0) -> Path:
    """Build (or reuse) the toy organism and run the whole study on it; return the report."""
    cfg = demo_config(out, seed)
    outputs = run_study(cfg)
    return outputs["report"]
