"""The report's sections for using the axis: steering, drift and traits, from their files."""

from __future__ import annotations

import pytest

from persona_dynamics.drift.slopes import slope_rows
from persona_dynamics.files import write_json, write_table
from persona_dynamics.report import run_report
from persona_dynamics.steering.dose import COLUMNS

from helpers import planted_run

pytestmark = pytest.mark.slow


def dose_rows():
    rows = []
    grid = [
        ("none", "none", 0.0, 2.0),
        ("away", "add", -4.0, 2.8),
        ("toward", "add", 4.0, 0.6),
        ("cap-p25", "cap", None, 1.2),
    ]
    for setting, mode, c, score in grid:
        for role in ("default", "pirate", "wizard"):
            judged = role != "default"
            rows.append(dict(zip(COLUMNS, [
                setting, "axis", "2", mode, c, 25.0 if mode == "cap" else None, role, 8,
                score if judged else None, score - 0.3 if judged else None,
                score + 0.3 if judged else None, 40.0, 0.9, 12.5], strict=True)))  # fmt: skip
    return rows


def test_steering_drift_and_traits_sections(tmp_path):
    cfg = planted_run.build(tmp_path, adapter=False, across=False)
    cfg.path("steering").mkdir(parents=True)
    write_table(cfg.path("steering", "dose_response.csv"), dose_rows())
    turns = [{"label": "instruct", "conversation": f"{d}-{k}", "domain": d, "turn": t, "layer": 2,
              "projection": (-0.5 * t if d == "therapy" else 0.0) + k, "z": 0.0}
             for d in ("coding", "therapy") for k in range(2) for t in range(1, 5)]  # fmt: skip
    cfg.path("drift").mkdir(parents=True)
    write_table(cfg.path("drift", "turns.csv"), turns)
    write_table(cfg.path("drift", "slopes.csv"), slope_rows(turns, 20, 0))
    write_json(cfg.path("traits", "summary.json"), {"layers": [2], "traits": {"formal": {
        "n_pos": 30, "n_neg": 28, "n_answers": 80, "auc_heldout": {"2": 0.97},
        "cosines": {"axis": {"2": 0.41}}}}})  # fmt: skip
    path = run_report(cfg)
    html = path.read_text()
    for part in ('id="steering"', 'id="plot-dose-response"', 'id="table-dose-response"',
                 'id="drift"', 'id="plot-drift"', 'id="table-drift-slopes"', 'id="traits"',
                 "cap-p25", "formal", "0.97"):  # fmt: skip
        assert part in html, part
    assert "-0.5" in html  # the therapy slope, planted at -0.5 per turn
    for key in ("plot-dose-response", "plot-drift"):
        assert (path.parent / "png" / f"{key}.png").stat().st_size > 5000
