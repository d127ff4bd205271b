"""The toy's planted steering relation, recovered by the real `calibrate` and `steer` stages.

On the demo run (the toy organism and its analysis' axis) the CLI calibrates and steers the demo
config's grid (conftest's `demo_steering`, what `demo --all` adds): the axis added at the toy's
steering layer at each c of toy.json's planted grid, in norm units, and a floor at p25, greedy,
over the demo roles and the default Assistant. Checked against what toy.json records, never a
constant chosen to pass:

- the judge's mean role score falls with c (c > 0 toward the Assistant), within sampling noise at
  each step, and the same check on the grid with the sign flipped fails;
- it agrees with the plant's prediction `toy.steer.predicted` (the baseline's own scores, each
  shifted a step per `step` of c) within two standard errors of the mean plus TOLERANCE, a tenth
  of one score step (the plant's unit of effect): the prediction is made from the same prompts'
  baseline scores, so what it leaves out is only where the learned relation departs from the
  rule: refusals, which the plant never trains under c (on the demo 12 of 474 baseline answers;
  they end up 0.03 points off at most) and the relation's imperfection; a flipped or absent
  relation misses by a point or more at c = +-1;
- the p25 floor lowers the role-play score below the unsteered baseline's: the mean paired
  difference over the same prompts is above two of its standard errors;
- and it keeps the default Assistant's greedy answers: at least 95% of their tokens as unsteered.
"""

from __future__ import annotations

import numpy as np
import pytest

from persona_dynamics.config import dump
from persona_dynamics.report.data import read_rows
from persona_dynamics.roles import DEFAULT
from persona_dynamics.scores import load_scores
from persona_dynamics.steering.spec import steered_study
from persona_dynamics.toy.steer import predicted
from persona_dynamics.transcripts import scores_path

from helpers.cli import cli

pytestmark = pytest.mark.slow

TOLERANCE = 0.1  # judge points, a tenth of one score step; the docstring says why
KEPT = 0.95  # the default Assistant's tokens a cap at p25 must leave as they were


@pytest.fixture(scope="module")
def steered(demo_steering):
    """The demo's steered run: config, toy.json and the dose-response rows."""
    cfg, truth = demo_steering
    return cfg, truth, read_rows(cfg.path("steering", "dose_response.csv"))


def scores(cfg, name: str | None) -> dict[tuple, int]:
    """Every judged role answer's score under setting `name` (None: the baseline), by key."""
    found = load_scores(scores_path(steered_study(cfg, name)))
    return {k: s for k, s in found.items() if s is not None}


def falls(means: list[float], ses: list[float]) -> bool:
    """Non-increasing within two standard errors at each step, and lower at the end."""
    steps = range(len(means) - 1)
    ok = all(means[i + 1] <= means[i] + 2 * np.hypot(ses[i], ses[i + 1]) for i in steps)
    return ok and means[-1] < means[0] - 2 * np.hypot(ses[0], ses[-1])


def test_the_grid_is_the_planted_one(steered):
    cfg, truth, _ = steered
    plant = truth["steering"]
    assert cfg.steering.vector == "axis" and cfg.steering.layers == plant["layers"]
    adds = [s for s in cfg.steering.settings if s.mode == "add"]
    assert all(s.unit == plant["unit"] and s.scope == plant["scope"] for s in adds)
    assert [s.coefficient for s in adds] == [c for c in plant["grid"] if c]


def test_the_score_falls_with_c_as_planted(steered):
    cfg, _, _ = steered
    names = {0.0: None} | {s.coefficient: s.name for s in cfg.steering.settings if s.mode == "add"}
    grid = sorted(names)
    scored = {c: list(scores(cfg, names[c]).values()) for c in grid}
    mean = {c: float(np.mean(v)) for c, v in scored.items()}
    se = {c: float(np.std(v) / np.sqrt(len(v))) for c, v in scored.items()}
    assert falls([mean[c] for c in grid], [se[c] for c in grid]), mean
    assert not falls([mean[c] for c in grid[::-1]], [se[c] for c in grid[::-1]])  # sign flipped
    for c in grid:
        want = predicted(scored[0.0], c)
        assert abs(mean[c] - want) <= TOLERANCE + 2 * se[c], (c, want, mean)


def test_a_floor_at_p25_lowers_role_play_and_keeps_the_default(steered):
    cfg, _, rows = steered
    cap = next(s for s in cfg.steering.settings if s.mode == "cap")
    assert (cap.percentile, cap.direction) == (25.0, "floor")
    base, capped = scores(cfg, None), scores(cfg, cap.name)
    diff = np.array([base[k] - capped[k] for k in base.keys() & capped.keys()])
    assert len(diff) >= 0.9 * len(base)
    assert diff.mean() > 2 * diff.std() / np.sqrt(len(diff)), np.bincount(diff + 3)
    default = next(r for r in rows if r["setting"] == cap.name and r["role"] == DEFAULT)
    assert default["same_tokens"] >= KEPT, default
    baseline = next(r for r in rows if r["setting"] == "none" and r["role"] == DEFAULT)
    assert baseline["same_tokens"] == 1.0


def test_the_report_shows_the_dose_response(steered, tmp_path):
    cfg, _, _ = steered
    conf = tmp_path / "demo.toml"
    conf.write_text(dump(cfg))
    r = cli("report", str(conf), "--out", str(tmp_path / "report"), "--no-png")
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "report" / "report.html").read_text()
    assert 'id="steering"' in text and "Steering dose-response" in text
