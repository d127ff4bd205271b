"""The report's loaders, figures and HTML on planted runs built through the real analyze/compare."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image
from plotly.offline import get_plotlyjs

from persona_dynamics.config import dump
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.report import data, plots, run_report, write_report
from persona_dynamics.report.html import figures_of, render

from helpers.planted_run import ADAPTER, ADAPTER_ROLE, SHIFT, build

FIGURES = ["plot-axis-movement", "plot-role-trajectories", "plot-variance", "plot-cos-layers",
           "plot-roles-pc", "plot-axis-ranking", "plot-adapters", "plot-across-wide"]  # fmt: skip


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """A scored run with four stages, a placed adapter and an across-models comparison."""
    root = tmp_path_factory.mktemp("report")
    cfg = build(root)
    return cfg, data.run_of(cfg)


def test_load_run_reads_every_file(planted_run):
    cfg, run = planted_run
    assert run.stages == list(SHIFT) and run.adapters == {ADAPTER: "instruct"}
    assert run.compared == [*SHIFT, ADAPTER] and run.reference == "instruct"
    assert run.layers == [0, 2, 3] and run.lead == 2 and run.scored
    assert list(run.across) == ["wide"]
    sp = run.spaces[2]
    assert len(sp.names) == 16 and sp.projections.shape[0] == 16
    # p(default) recomputed from space.h5's vectors agrees with compare's own projection
    row = next(r for r in data.vector_rows(run, 2, "instruct") if r["vector"] == "default")
    assert sp.default_axis == pytest.approx(row["axis"], rel=1e-5)
    with h5py.File(cfg.path("analysis") / "space.h5") as h5:
        np.testing.assert_allclose(sp.axis_projections, h5["layer_2/axis_projections"][:])
    assert sp.stats["cos_pc1_axis"][0] == pytest.approx(
        run.summary["per_layer"]["2"]["cos_pc1_axis"]["value"]
    )


def test_series_recover_the_planted_stages(planted_run):
    _, run = planted_run
    mean = data.series(run, 2, "axis_mean")
    assert mean["label"] == list(SHIFT)
    np.testing.assert_allclose(np.diff(mean["value"]), np.diff(list(SHIFT.values())), rtol=0.02)
    sep = data.series(run, 2, "separation")["value"]
    assert np.all(np.diff(sep) < 0)  # roles approach the Assistant stage by stage
    # raw movement halves on the halved layer 0; the scale-free separation does not
    half = data.series(run, 0, "axis_mean")["value"]
    np.testing.assert_allclose(np.diff(half), np.diff(mean["value"]) / 2, rtol=1e-3)
    np.testing.assert_allclose(data.series(run, 0, "separation")["value"], sep, rtol=1e-4)
    tracks = data.trajectories(run, 2)
    assert set(tracks) == {f"role{i:02d}@3" for i in range(8)} | {"default"}
    t = tracks["role03@3"]
    assert t["label"] == list(SHIFT) and np.allclose(np.diff(t["axis"]), 1, rtol=0.02)
    assert set(data.trajectories(run, 2, ["role01"])) == {"role01@3", "default"}


def test_ranking_and_stage_table(planted_run):
    _, run = planted_run
    r = data.ranking(run, 2)
    assert np.all(np.diff(r["value"]) >= 0) and len(r["names"]) == 16
    assert np.all(r["lo"] <= r["hi"]) and np.isfinite(r["default"]).all()
    rows = data.stage_table(run, 2)
    assert [x["label"] for x in rows] == list(SHIFT) and rows[-1]["reference"]
    lead = run.summary["per_layer"]["2"]
    assert rows[-1]["n_pcs"][0] == lead["n_pcs_target"]["value"]
    for x in rows:  # refit statistics for every stage; loadings agree with the reference
        assert np.isfinite(x["cos_pc1_axis"][0]) and x["n_pcs"][0] >= 1
        assert x["loading_corr_pc1"][0] == pytest.approx(1, abs=1e-6)
        assert x["separation"] == data.statistic(run, x["label"], 2, "separation")


def test_adapter_placements(planted_run):
    _, run = planted_run
    places = {p["text"]: p for p in data.placements(run, 2)}
    assert set(places) == {"reference-text", "own-text"}
    ref, own = places["reference-text"], places["own-text"]
    assert ref["base"] == "instruct" and ref["nearest"][0][0].startswith(ADAPTER_ROLE)
    assert own["nearest"][0][0] == f"{ADAPTER_ROLE}@3"
    # planted: own text moves the default twice as far as the reference text does
    assert own["axis_shift"][0] == pytest.approx(2 * ref["axis_shift"][0], rel=1e-3)
    assert data.default_pcs(run, "instruct", 2)[0] == pytest.approx(
        run.spaces[2].default_projection[0]
    )


def test_figures_carry_the_data(planted_run):
    _, run = planted_run
    move = plots.axis_movement(run)
    by = {t.name: t for t in move.data}
    assert list(by["separation"].x) == list(SHIFT)
    np.testing.assert_allclose(by["separation"].y, data.series(run, 2, "separation")["value"])
    assert all(a >= 0 for a in by["separation"].error_y.array)
    pc = plots.roles_pc(run, 2, roles=["role00", "role01"])
    assert {n for t in pc.data[:-1] for n in t.customdata} == {"role00@3", "role00@2",
                                                                "role01@3", "role01@2"}  # fmt: skip
    full = plots.roles_pc(run, 2)  # the roles at each end of PC1 are named, the rest hover only
    points = sorted((x, n) for t in full.data[:-1] for x, n in zip(t.x, t.customdata, strict=True))
    ends = {n for _, n in points[: plots.EXTREMES] + points[-plots.EXTREMES :]}
    assert {n for t in full.data[:-1] for n in t.text if n} == ends
    star = pc.data[-1]
    assert star.marker.symbol == "star" and star.x[0] == run.spaces[2].default_projection[0]
    rank = plots.axis_ranking(run, 0)
    assert rank.layout.title.text.endswith("(layer 0)") and rank.data[1].y == (
        "Assistant (default)",
    )
    cos = plots.cos_layers(run)
    assert list(cos.data[0].x) == [0, 2, 3]


def test_trajectory_names_do_not_overlap():
    """Ends crowded together: the default and the extremes are named, no two names too close."""
    ends = {"default": 0.5, **{f"r{i}": (i / 99) ** 2 for i in range(100)}, "gone": float("nan")}
    named = plots.spread_labels(ends)
    assert {"default", "r0", "r99"} <= named and "gone" not in named
    values = sorted(ends[n] for n in named)
    assert min(np.diff(values)) >= plots.LABEL_GAP
    assert len(named) >= 1 / plots.LABEL_GAP / 2  # the spread is used, not just the ends
    assert plots.spread_labels({"default": 1.0, "a": 1.0}) == {"default"}


def test_png_writer(planted_run, tmp_path):
    _, run = planted_run
    fig = plots.axis_movement(run)
    path = plots.write_png(fig, tmp_path / "m.png", dpi=100)
    with Image.open(path) as im:
        assert im.size == (fig.layout.width, fig.layout.height)
        pixels = np.asarray(im.convert("RGB"))
    # the default Assistant's red line is drawn: many pure-ish red pixels
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 500


def test_report_html_and_pngs(planted_run, tmp_path):
    _, run = planted_run
    path = write_report(run, tmp_path / "out")
    text = path.read_text()
    for key in FIGURES:
        assert f'id="{key}"' in text, key
        with Image.open(tmp_path / "out" / "png" / f"{key}.png") as im:
            assert im.size[0] > 500
    assert text.count("Plotly.newPlot(") == len(FIGURES)
    assert text.count("plotly.js v") == 1  # the library inlined once: works offline
    assert not re.search(r"<script[^>]+src=", text)  # nothing fetched: no CDN, no files
    assert text.count("https://") == get_plotlyjs().count("https://")  # only the library's own
    for tid in ("table-stages", "table-paper", "table-adapters", "table-provenance"):
        assert f'id="{tid}"' in text
    assert 'id="unscored"' not in text and 'id="no-adapters"' not in text
    assert "4 to 19 PCs explain 70% of the variance" in text  # the paper's figures beside ours
    prov = text[text.index('id="table-provenance"') :]
    for item in ("bootstrap replicates B</td><td>20", "seed</td><td>0", "0.1.0", "toy"):
        assert item in prov, item


def test_a_toy_run_says_so_and_what_was_planted(planted_run, tmp_path):
    _, run = planted_run
    figures = figures_of(run, 2)
    assert run.toy is None and 'id="toy"' not in render(run, 2, figures)
    model = tmp_path / "toy" / "instruct"
    model.mkdir(parents=True)
    (model.parent / "toy.json").write_text('{"version": "3", "plant": {}}')
    with pytest.raises(PersonaDynamicsError, match=r"toy\.json.*geometry, expected_effect"):
        data.toy_truth(str(model))
    truth = {"version": "3", "plant": {}, "expected_effect": {"dpo": 0.2, "instruct": 0.65},
             "geometry": {"order": list("abcdefg"), "default_position_pc1": 0.9348}}  # fmt: skip
    (model.parent / "toy.json").write_text(json.dumps(truth))
    assert data.toy_truth(str(model)) == truth and data.toy_truth("allenai/OLMo-2") is None
    text = render(dataclasses.replace(run, toy=truth), 2, figures)
    note = text[text.index('id="toy"') :]
    note = note[: note.index("</div>")]
    for part in ("recipe v3", "nearest a, b, c", "farthest e, f, g", "0.93", "instruct 0.65"):
        assert part in note, part
    assert text.index('id="toy"') < text.index('id="table-stages"')  # on top


def test_unscored_run_without_adapters_says_so(tmp_path):
    cfg = build(tmp_path, scored=False, adapter=False, across=False)
    text = run_report(cfg).read_text()
    assert 'id="unscored"' in text and "no judge scores" in text
    assert text.index('id="unscored"') < text.index("plot-axis-movement")  # prominent: on top
    assert 'id="no-adapters"' in text and 'id="plot-adapters"' not in text
    assert "plot-across" not in text
    assert (cfg.path("reports") / "png" / "plot-axis-movement.png").is_file()


def test_report_before_compare_and_bad_layer(tmp_path):
    cfg = build(tmp_path, adapter=False, across=False)
    for name in ("dynamics.json", "dynamics.csv", "labels.csv"):
        (cfg.path("analysis") / name).unlink()
    cfg.report.png = False
    text = run_report(cfg).read_text()
    assert 'id="no-compare"' in text and 'id="plot-axis-movement"' not in text
    assert 'id="plot-roles-pc"' in text and 'id="table-stages"' in text
    cfg.report.layer = 1
    with pytest.raises(PersonaDynamicsError, match=r"report.layer 1 was not analyzed"):
        run_report(cfg)
    (cfg.path("analysis") / "space.h5").unlink()
    with pytest.raises(PersonaDynamicsError, match="run `persona-dynamics analyze`"):
        run_report(cfg)


def test_cli_report(planted_run, tmp_path):
    cfg, _ = planted_run
    toml = tmp_path / "study.toml"
    toml.write_text(dump(cfg))
    out = tmp_path / "rep"
    cmd = [sys.executable, "-m", "persona_dynamics", "report", str(toml), "--out", str(out),
           "--layer", "0", "--no-png"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out / "report.html")
    assert "layer 0 (lead layer 2)" in (out / "report.html").read_text()
    assert not (out / "png").exists()
    r = subprocess.run(cmd[:-3] + ["--layer", "7"], capture_output=True, text=True)
    assert r.returncode == 2 and "report.layer 7 was not analyzed" in r.stderr
    assert "Traceback" not in r.stderr
