"""The toy organism end to end: a persona adapter trained on a role's style lands on that role.

Placement is read off the demo run (24 roles x 8 questions, judge-scored vectors, the demo's
90-step adapters): with 3 questions, the bootstrap over questions is too coarse to test the
nearest role's interval, and a 40-step adapter's style varies with the library versions. The
wizard is the persona tested: of the demo's three, the toy v5 plays it most strongly (measured
2026-12-06: own text 5.3 wizard markers per answer, nearest the wizard at cos 0.80 vs 0.40 next;
the samurai 5.2 and 0.60 vs 0.49; the cat 3.3, nearest the samurai, its style learned weakly).
"""

from __future__ import annotations

import json

import pytest

from persona_dynamics.adapters.demo import toy_training
from persona_dynamics.adapters.place import OWN_TEXT, REFERENCE_TEXT, own_text_config
from persona_dynamics.adapters.train import adapter_dir, train_adapter
from persona_dynamics.config import Adapters
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.pipeline import run_own_text
from persona_dynamics.toy import STYLES, marker_count, single_thread, study_config
from persona_dynamics.transcripts import read_transcripts, transcripts_dir


@pytest.mark.slow
def test_wizard_adapter_answers_as_the_wizard_and_lands_nearest_the_wizard_vector(demo_run):
    cfg, outputs = demo_run
    label = "persona-wizard"

    # the adapter speaks as the wizard under the default Assistant's prompts
    own = read_transcripts(transcripts_dir(own_text_config(cfg, label)))
    n_questions = cfg.roles.question_count
    assert {r["role"] for r in own} == {"default"} and len(own) == 6 * n_questions
    wizard = sum(marker_count(r["response"], STYLES["wizard"]) for r in own) / len(own)
    assert wizard >= 3, [r["response"] for r in own[:3]]

    report = json.loads(outputs["place"].read_text())
    texts = report["adapters"][label]["texts"]
    assert report["adapters"][label]["base"] == "instruct"
    mine = texts[OWN_TEXT]
    assert mine["nearest"][0]["role"] == "wizard" and mine["nearest_share"] >= 0.9, (
        mine["nearest"][:3],
        mine["nearest_share"],
    )
    assert mine["nearest"][0]["cos_lo"] > mine["nearest"][1]["cos"]
    # away from the Assistant: its default vector moved down the Assistant Axis
    assert mine["axis_shift"]["hi"] < 0
    # reading fixed text changes less than speaking as itself
    assert texts[REFERENCE_TEXT]["axis_shift"]["value"] > mine["axis_shift"]["value"]


@pytest.mark.slow
def test_a_retrained_adapter_is_refused_over_the_old_adapters_own_text(toy_family, tmp_path):
    (spec,) = toy_training(tmp_path / "personas", ("cat",))
    spec = spec.model_copy(update={"max_steps": 2})
    cfg = study_config(toy_family, "toy-adapters", tmp_path / "out", roles__question_count=1)
    instruct = cfg.checkpoint("instruct")
    adapted = instruct.model_copy(
        update={"label": "cat-adapter", "adapter": str(adapter_dir(cfg, "cat"))}
    )
    cfg = cfg.model_copy(
        update={
            "judge": None,
            "checkpoints": [instruct, adapted],
            "adapters": Adapters(training=[spec], device="cpu"),
        }
    )
    with single_thread():
        train_adapter(cfg, spec)
        run_own_text(cfg, ["cat-adapter"])
        train_adapter(cfg, spec.model_copy(update={"seed": 1}))
        with pytest.raises(PersonaDynamicsError, match="other adapter weights"):
            run_own_text(cfg, ["cat-adapter"])
