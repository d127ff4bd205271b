"""The whole study in order: `run_study(cfg)` runs every stage a config names, each resuming.

Stages are looked up by name so that a study that never trains adapters never imports peft, and
a stage whose config section is absent (no `[judge]`, `[adapters]`, `[[steering.settings]]`,
`[drift]` or `[traits] specs`) is skipped with a note.
Before `place`, each adapter's own-text generate and capture runs here (`run_own_text`), as the
stage work whose files `place` reads. Timings go to `<output_root>/runs/<run>.json`, which the demo
benchmark checks against budgets.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path

from persona_dynamics import __version__
from persona_dynamics.config import NO_SETTING, STAGES, USE_STAGES, Study, dump
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.files import write_json

log = logging.getLogger(__name__)

RUNNERS = {
    "generate": "persona_dynamics.generation.run:run_generate",
    "judge": "persona_dynamics.judge:run_judge",
    "adapters": "persona_dynamics.adapters.train:run_adapters",
    "capture": "persona_dynamics.capture.run:run_capture",
    "analyze": "persona_dynamics.analysis:run_analyze",
    "compare": "persona_dynamics.analysis:run_compare",
    "place": "persona_dynamics.adapters.place:run_place",
    "calibrate": "persona_dynamics.steering.calibrate:run_calibrate",
    "steer": "persona_dynamics.pipeline:run_steer",
    "drift": "persona_dynamics.drift.run:run_drift",
    "traits": "persona_dynamics.traits.run:run_traits",
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
    if stage in ("calibrate", "steer") and not cfg.steering.settings:
        return "no [[steering.settings]] entries"
    if stage == "drift" and cfg.drift is None:
        return "no [drift] section"
    if stage == "traits" and not cfg.traits.specs:
        return "no [traits] specs"
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
        if stage == "place":
            run_own_text(cfg)  # the files `place` reads: each adapter's own answers, captured
        outputs[stage] = runner(stage)(cfg)
        timings[stage] = round(time.perf_counter() - t0, 2)
        log.info("stage %s done in %.1f s: %s", stage, timings[stage], outputs[stage])
    _record(cfg, outputs, timings)
    return outputs


def run_own_text(cfg: Study, labels: list[str] | None = None) -> list[Path]:
    """Each adapter answers the default prompts x shared questions (generate), then its answers
    are captured: the own-text stores `place` reads. Returns the stores."""
    from persona_dynamics.adapters.place import (
        adapter_labels,
        base_of,
        own_text_config,
        own_text_store,
    )
    from persona_dynamics.capture import run_capture
    from persona_dynamics.generation import run_generate

    labels = labels or adapter_labels(cfg)
    for label in labels:
        base_of(cfg, label)  # fail before any generation when an adapter has no base
    for label in labels:
        own = own_text_config(cfg, label)
        claim_own_text(own, label)
        transcripts = run_generate(own)
        own.capture = own.capture.model_copy(update={"transcript_dir": transcripts})
        run_capture(own)
    return [own_text_store(cfg, label) for label in labels]


def run_steer(cfg: Study) -> Path:
    """Generate and judge the steering checkpoint under every steering setting (and unsteered,
    the baseline), then measure the dose-response: `steering/<run>/dose_response.csv`."""
    from persona_dynamics.generation import run_generate
    from persona_dynamics.judge import run_judge
    from persona_dynamics.steering.run import run_dose
    from persona_dynamics.steering.spec import steered_study
    from persona_dynamics.transcripts import selection

    if not cfg.steering.settings:
        raise PersonaDynamicsError("no [[steering.settings]] in the config: nothing to steer")
    if any(s.name == NO_SETTING for s in cfg.steering.settings):
        raise PersonaDynamicsError(
            f"steering setting '{NO_SETTING}' is the unsteered baseline's name; choose another"
        )
    if cfg.judge is None:
        raise PersonaDynamicsError("steer needs a [judge] section to score the steered answers")
    for name in [None, *(s.name for s in cfg.steering.settings)]:
        sub = steered_study(cfg, name)
        log.info("steering setting %s ...", name or "none (baseline)")
        run_generate(sub)
        if any(not r.is_default for r in selection(sub)[0]):  # the default is never judged
            run_judge(sub)
    return run_dose(cfg)


def claim_own_text(own: Study, label: str) -> None:
    """Record which adapter weights write this own-text directory; refuse other weights."""
    from persona_dynamics.adapters.place import OWN_TEXT_MARKER, adapter_digest, own_text_store
    from persona_dynamics.transcripts import transcripts_dir

    ckpt = own.checkpoint(label)
    directory = transcripts_dir(own)
    marker = directory / OWN_TEXT_MARKER
    mine = {"adapter": ckpt.adapter, "digest": adapter_digest(ckpt.adapter)}
    if marker.is_file():
        had = json.loads(marker.read_text(encoding="utf-8"))
        if had.get("digest") != mine["digest"]:
            raise PersonaDynamicsError(
                f"{directory}: own-text of '{label}' was generated by other adapter weights "
                f"(digest {had.get('digest')}, now {mine['digest']}); delete it and "
                f"{own_text_store(own, label)} to measure the new adapter"
            )
        return
    write_json(marker, mine)


def _record(cfg: Study, outputs: dict[str, Path], timings: dict[str, float]) -> None:
    """Write what ran, how long each stage took and the resolved config (atomically)."""
    record = {
        "run": cfg.run_name,
        "version": __version__,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": timings,
        "outputs": {k: str(v) for k, v in outputs.items()},
        "config": dump(cfg),
    }
    write_json(cfg.output_root / "runs" / f"{cfg.run_name}.json", record, indent=2)


# --- the offline demo ----------------------------------------------------------------------------

DEMO_QUESTIONS = 8  # 24 roles x 5 prompts x 8 questions + the default Assistant: ~1,000 transcripts
DEMO_STEER_QUESTIONS = 4  # per steering setting: 24 roles x 5 prompts x 4 + 6 x 4 default


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
        stages=[s for s in STAGES if s not in USE_STAGES],  # `demo --all` runs these too
        steering=demo_steering(family.truth["steering"]),
    )


def demo_steering(plant: dict) -> dict:
    """`demo --all`'s grid: the axis added at the toy's steering layer at each c of the planted
    grid (c = 0 is the baseline) and a floor at p25, greedy, on four questions."""
    adds = [{"name": f"add{c:+g}", "coefficient": c} for c in plant["grid"] if c]
    cap = {"name": "cap-p25", "mode": "cap", "percentile": 25.0, "direction": "floor"}
    return {"vector": "axis", "layers": plant["layers"], "question_count": DEMO_STEER_QUESTIONS,
            "temperature": 0.0, "settings": [*adds, cap]}  # fmt: skip


def run_demo(out: Path = Path("outputs"), seed: int = 0, all_stages: bool = False) -> Path:
    """Build (or reuse) the toy organism and run the whole study on it (with `all_stages`, the
    use stages too: calibrate, steer, and drift and traits where configured); return the report."""
    cfg = demo_config(out, seed)
    outputs = run_study(cfg, STAGES if all_stages else None)
    return outputs["report"]
