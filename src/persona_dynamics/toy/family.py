"""A toy family on disk: opening a built one, the content hash of a build, and the build itself
(train every stage and the judge, write `toy.json` with the planted truth and what it measured).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from persona_dynamics import roles
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.files import write_json
from persona_dynamics.judges import judge_prompt
from persona_dynamics.toy import drift, traits
from persona_dynamics.toy.data import DEMO_ROLES, MODEL_NAME, SCORE_MIX, Corpus, Source
from persona_dynamics.toy.geometry import ORDER
from persona_dynamics.toy.measure import measure
from persona_dynamics.toy.spec import LORA, ToySpec
from persona_dynamics.toy.steer import STEP, TRAINED
from persona_dynamics.toy.styles import (
    ASSISTANT,
    ASSISTANT_SENTENCES,
    DISCLAIMER,
    HELPS_OPENER,
    REFUSAL,
    ROLE_SENTENCES,
    STYLES,
)
from persona_dynamics.toy.tokenizer import build_tokenizer
from persona_dynamics.toy.train import single_thread, train_judge, train_stages

log = logging.getLogger(__name__)

TOY_VERSION = "5"  # bump when the recipe changes in a way the cache key does not see


@dataclass
class ToyFamily:
    """A built toy organism: checkpoint directories in stage order, the judge, the planted truth."""

    root: Path
    checkpoints: dict[str, Path]
    judge: Path
    truth: dict = field(repr=False)

    @classmethod
    def load(cls, root: Path) -> ToyFamily:
        """Open a built family from its directory (its `toy.json`)."""
        root = Path(root)
        truth = roles.read_json(root / "toy.json")
        if not isinstance(truth, dict) or "stages" not in truth:
            raise PersonaDynamicsError(f"{root / 'toy.json'}: not a toy organism's truth file")
        return cls(root, {s: root / s for s in truth["stages"]}, root / "judge", truth)


def cache_key(seed: int, spec: ToySpec, src: Source) -> str:
    """Content hash of all a build depends on: recipe, seed, spec, data, judge prompt, libraries."""
    import torch
    import transformers

    return roles.digest(
        {
            "version": TOY_VERSION,
            "seed": seed,
            "spec": asdict(spec),
            "data": src.digest(),
            "styles": [asdict(s) for s in (*STYLES.values(), ASSISTANT)],
            "texts": [ROLE_SENTENCES, ASSISTANT_SENTENCES, DISCLAIMER, HELPS_OPENER, REFUSAL],
            "mix": SCORE_MIX,
            "order": ORDER,
            "steer": [TRAINED, STEP],
            "drift": [drift.PER_TURN, drift.TURNS],
            "traits": [asdict(t) for t in traits.TRAITS.values()]
            + [traits.LEVELS, traits.COHERENT, traits.INCOHERENT, traits.MAGNITUDE],
            "judge_prompt": judge_prompt("RUBRIC", "QUESTION", "RESPONSE"),
            "libraries": [torch.__version__, transformers.__version__],
        }
    )


def build(out: Path, seed: int = 0, spec: ToySpec | None = None) -> ToyFamily:
    """Train the whole family into `out`; write the planted truth and measurements to toy.json."""
    spec = spec or ToySpec()
    t0, c0 = time.perf_counter(), time.process_time()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "toy.json").exists():
        raise PersonaDynamicsError(f"{out}: exists and is not a toy build; choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    src = Source.load()

    def took() -> str:
        return f"{time.perf_counter() - t0:.1f} s, {time.process_time() - c0:.1f} s CPU"

    with single_thread():
        data = Corpus.draw(src, spec, seed)
        tok = build_tokenizer(data.tokenizer_texts(), spec.vocab)
        seconds = {"data": time.perf_counter() - t0}
        losses, steer, directions = train_stages(out, tok, data, spec, seed)
        seconds["stages"] = time.perf_counter() - t0 - sum(seconds.values())
        log.info("toy: %s trained (%s)", ", ".join(spec.stages), took())
        losses["judge"], agreement = train_judge(out, tok, data, spec, seed)
        seconds["judge"] = time.perf_counter() - t0 - sum(seconds.values())
        log.info("toy: judge trained, held-out agreement %.3f (%s)", agreement, took())
        rubrics = {r.name: r.eval_prompt for r in src.roles}
        measured = measure(out, tok, data, spec, rubrics, directions)
        seconds["measure"] = time.perf_counter() - t0 - sum(seconds.values())
    held_out = [src.questions[i].question for i in src.split(held_out=True)][: traits.QUESTIONS]
    for name, t in traits.TRAITS.items():
        write_json(out / "traits" / f"{name}.json", t.spec(held_out), indent=1)

    fractions = spec.fractions()
    planted = {s: f for s, f in fractions.items() if f is not None}
    truth = {
        "version": TOY_VERSION,
        "key": cache_key(seed, spec, src),
        "seed": seed,
        "stages": spec.stages,
        "reference": "instruct",
        "layer": spec.layer,
        "model_name": MODEL_NAME,
        "demo_roles": DEMO_ROLES,
        "plant": {
            "method": "auxiliary loss at the planted layers translating role-play response means "
            "toward the default Assistant by a fraction of the SFT role-to-Assistant gap; "
            "base is not planted",
            "layers": spec.planted_layers,
            "fraction": fractions,
        },
        "geometry": spec.geometry().record(spec.planted_layers),
        "steering": steer.record(spec.steered),
        "drift": drift.record(spec.drift_layers, spec.talks),
        "traits": traits.record(spec.trait_layers, directions, spec.traited),
        "expected_order": list(planted),
        "expected_effect": planted,
        "expected_separation_ratio": {s: round(1 - f, 4) for s, f in planted.items()},
        "measured": measured,
        "judge": {"held_out_agreement": agreement, "n": len(data.judge_test)},
        "styles": {r: asdict(s) for r, s in STYLES.items()} | {roles.DEFAULT: asdict(ASSISTANT)},
        "score_mix": {str(k): v for k, v in SCORE_MIX.items()},
        "final_loss": {k: [round(x, 4) for x in v[-1]] for k, v in losses.items()},
        "model_config": spec.model_config(tok),
        "spec": asdict(spec),
        "lora": LORA,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "build_cpu_seconds": round(time.process_time() - c0, 1),
        "phase_seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    write_json(out / "toy.json", truth)
    log.info("toy: built %s (%s)", out, took())
    return ToyFamily.load(out)
