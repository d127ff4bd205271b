"""`revisions`: list a repo's refs, or add them to a study config before the reference."""

from __future__ import annotations

from typer.testing import CliRunner

from persona_dynamics import models
from persona_dynamics.cli import app
from persona_dynamics.config import load

from helpers.paths import ROOT

REFS = [
    ("branch", "main", "a" * 40),
    ("branch", "step_1000", "b" * 40),
    ("branch", "step_200", "c" * 40),
    ("tag", "v1.0", "d" * 40),
]


def test_list_and_add_to(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "list_revisions", lambda model: REFS)
    runner = CliRunner()
    r = runner.invoke(app, ["revisions", "allenai/OLMo-2-1124-7B-Instruct", "--match", "step"])
    assert r.exit_code == 0 and r.output.splitlines() == [
        f"branch\tstep_1000\t{'b' * 40}",
        f"branch\tstep_200\t{'c' * 40}",
    ]
    out = tmp_path / "study.toml"
    r = runner.invoke(
        app,
        ["revisions", "allenai/OLMo-2-1124-7B-Instruct", "--match", "^step_",
         "--add-to", str(ROOT / "analysis" / "olmo2-7b-stages.toml"), "--out", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = load(out)
    labels = [c.label for c in cfg.checkpoints]
    assert labels == ["base", "sft", "dpo", "step_200", "step_1000", "instruct"]  # natural order
    assert cfg.checkpoint("step_200").revision == "step_200"
    assert cfg.reference_label == "instruct"
