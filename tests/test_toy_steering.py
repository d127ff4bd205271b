"""The toy's planted steering relation, recovered by the real `calibrate` and `steer` stages.

On the demo run (the toy organism and its analysis' axis) the CLI calibrates and steers the demo
config's grid (conftest's `demo_steering`, what `demo --all` adds): the axis added at the toy's
steering layer at each c of toy.json's planted grid, in norm units, and a floor at p25, greedy,
over the demo roles and the default Assistant. Checked against what toy.json records, never a
constant chosen to pass:

- the judge's mean role score falls with c (c > 0 toward the Assistant), within sampling noise at
  each step, and the same check on the grid with the sign flipped fails;
- it agrees with the plant's prediction `toy.steer.predicted` (the baseline's own scores, shifted
  a step per `step` of c) within TOLERANCE plus two standard errors of the mean. TOLERANCE is
  0.35 judge points: the build's own judged sample (toy.json `measured.steering`) deviates from the
  prediction by up to about 0.16, and the model learns the planted steps on a sampled-answer
  objective while `steer` decodes greedily here, so saturating shifts (a score at 3 pushed further
  into the role, a refusal pushed toward the Assistant) land up to a few tenths off; a flipped or
  absent relation misses by a full point or more at c = +-1;
- the p25 floor lowers the role-play score below the unsteered baseline's interval;
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

TOLERANCE = 0.35  # judge points; the docstring says why
KEPT = 0.95  # the default Assistant's tokens a cap at p25 must leave as they were


@pytest.fixture(scope="module")
def steered(demo_steering):
    """The demo's steered run: config, toy.json and the dose-response rows."""
    cfg, truth = demo_steering
    return cfg, truth, read_rows(cfg.path("steering", "dose_response.csv"))


def role_scores(cfg, name: str | None) -> list[int]:
    """Every judged role answer's score under setting `name` (None: the baseline)."""
    return [s for s in load_scores(scores_path(steered_study(cfg, name))).values() if s is not None]


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
    scores = {c: role_scores(cfg, names[c]) for c in grid}
    mean = {c: float(np.mean(v)) for c, v in scores.items()}
    se = {c: float(np.std(v) / np.sqrt(len(v))) for c, v in scores.items()}
    assert falls([mean[c] for c in grid], [se[c] for c in grid]), mean
    assert not falls([mean[c] for c in grid[::-1]], [se[c] for c in grid[::-1]])  # sign flipped
    for c in grid:
        want = predicted(scores[0.0], c)
        assert abs(mean[c] - want) <= TOLERANCE + 2 * se[c], (c, want, mean)


def test_a_floor_at_p25_lowers_role_play_and_keeps_the_default(steered):
    cfg, _, rows = steered
    cap = next(s.name for s in cfg.steering.settings if s.mode == "cap")
    assert next(s for s in cfg.steering.settings if s.name == cap).percentile == 25.0

    def roles(name):
        return [r for r in rows if r["setting"] == name and r["role"] != DEFAULT]

    base, capped = roles("none"), roles(cap)
    assert len(base) == len(capped) == len(cfg.roles.include)
    assert np.mean([r["score_mean"] for r in capped]) < np.mean([r["score_lo"] for r in base])
    default = next(r for r in rows if r["setting"] == cap and r["role"] == DEFAULT)
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
