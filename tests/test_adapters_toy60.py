"""The toy organism end to end: a persona adapter trained on a role's style lands on that role."""

from __future__ import annotations

import json

import pytest

from persona_dynamics.adapters.demo import toy_training
from persona_dynamics.adapters.place import OWN_TEXT, REFERENCE_TEXT, run_place
from persona_dynamics.adapters.train import adapter_dir, train_adapter
from persona_dynamics.config import Adapters
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.pipeline import run_own_text
from persona_dynamics.toy import STYLES, marker_count, single_thread, study_config


@pytest.mark.slow
def test_cat_adapter_answers_as_the_cat_and_lands_nearest_the_cat_vector(toy_family, tmp_path):
    from persona_dynamics.adapters.place import own_text_config
    from persona_dynamics.capture import run_capture
    from persona_dynamics.generation import run_generate
    from persona_dynamics.transcripts import read_transcripts, transcripts_dir

    (spec,) = toy_training(tmp_path / "personas", ("cat",))
    spec = spec.model_copy(update={"max_steps": 60})
    cfg = study_config(
        toy_family, "toy-adapters", tmp_path / "out",
        roles__question_count=3, analysis={"bootstrap": 20},
    )  # fmt: skip
    instruct = cfg.checkpoint("instruct")
    adapted = instruct.model_copy(
        update={"label": "cat-adapter", "adapter": str(adapter_dir(cfg, "cat"))}
    )
    cfg = cfg.model_copy(
        update={
            "judge": None,  # one vector per role from all its samples: no judge run needed
            "checkpoints": [instruct, adapted],
            "adapters": Adapters(training=[spec], device="cpu"),
        }
    )
    with single_thread():
        run_generate(cfg)
        train_adapter(cfg, spec)
        run_capture(cfg)
        run_own_text(cfg, ["cat-adapter"])
        report = json.loads(run_place(cfg).read_text())

    # the adapter speaks as the cat under the default Assistant's prompts
    own = read_transcripts(transcripts_dir(own_text_config(cfg, "cat-adapter")))
    assert {r["role"] for r in own} == {"default"} and len(own) == 6 * 3
    cat = sum(marker_count(r["response"], STYLES["cat"]) for r in own) / len(own)
    assert cat >= 3, [r["response"] for r in own[:3]]

    texts = report["adapters"]["cat-adapter"]["texts"]
    assert report["adapters"]["cat-adapter"]["base"] == "instruct"
    mine = texts[OWN_TEXT]
    assert mine["nearest"][0]["role"] == "cat" and mine["nearest_share"] >= 0.9
    assert mine["nearest"][0]["cos_lo"] > mine["nearest"][1]["cos"]
    # away from the Assistant: its default vector moved down the Assistant Axis
    assert mine["axis_shift"]["hi"] < 0
    # reading fixed text changes less than speaking as itself
    assert texts[REFERENCE_TEXT]["axis_shift"]["value"] > mine["axis_shift"]["value"]

    # a retrained adapter is refused over the old adapter's own text
    train_adapter(cfg, spec.model_copy(update={"seed": 1, "max_steps": 2}))
    with pytest.raises(PersonaDynamicsError, match="other adapter weights"):
        run_own_text(cfg, ["cat-adapter"])
