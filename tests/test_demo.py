"""The offline demo: every stage ran, the config it ran is the shipped analysis/demo.toml."""

from __future__ import annotations

import json

import pytest

from persona_dynamics.config import STAGES, USE_STAGES, dump, load

from helpers.paths import ROOT


@pytest.mark.slow
def test_demo_ran_every_stage_and_recorded_it(demo_run):
    cfg, outputs = demo_run
    assert list(outputs) == cfg.stages == [s for s in STAGES if s not in USE_STAGES]
    record = json.loads((cfg.output_root / "runs" / "demo.json").read_text())
    assert set(record["seconds"]) == set(cfg.stages)
    assert outputs["report"].name == "report.html" and outputs["report"].stat().st_size > 1e6
    assert (outputs["report"].parent / "png" / "plot-axis-movement.png").exists()
    # the report says the run is on the toy, and the planted geometry (toy.json claims: PC1 the
    # axis, few PCs, the default at PC1's end and inside the range on PCs 2-10) reads as the paper's
    text = outputs["report"].read_text()
    assert 'id="toy"' in text and "not a finding about language models" in text
    at = text.index('id="toy"')
    note = text[at : text.index("</div>", at)]
    truth = json.loads((cfg.output_root / "toy" / "toy.json").read_text())
    assert f"at layer {truth['steering']['layers'][0]} moves" in note, note
    assert f"per {truth['steering']['step']:g} of c" in note and "turn by turn in therapy" in note
    assert all(name in note for name in truth["traits"]["traits"]), note
    summary = json.loads((cfg.path("analysis") / "summary.json").read_text())
    verdicts = {r["statistic"]: r["agrees"] for r in summary["paper"] if r["bound"]}
    assert len(verdicts) == 6 and all(verdicts.values()), verdicts


@pytest.mark.slow
def test_shipped_demo_config_is_what_the_demo_runs(demo_run):
    cfg, _ = demo_run
    ran = dump(cfg).replace(str(cfg.output_root), "outputs").replace(str(ROOT) + "/", "")
    assert ran == dump(load(ROOT / "analysis" / "demo.toml"))
