"""The notebooks executed with nbclient: axis_explorer.ipynb on a planted run's analysis files and
the demo's, steering.ipynb on the demo's steered run."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

from persona_dynamics.config import dump

from helpers.planted_run import ADAPTER, SHIFT, build

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "axis_explorer.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"


# Per-cell limit. With nbclient 0.11 / ipykernel 7.4 the interact cells over a SelectMultiple
# (space, trajectories) leave the client waiting out this limit before the next cell, without an
# error: 2 x 180 s on the demo's outputs. Every cell runs in under 3 s, so 60 s bounds that wait.
CELL_TIMEOUT = 60


def execute(tmp_path, run_dir, notebook=NOTEBOOK, cell_timeout=CELL_TIMEOUT, **extra) -> dict:
    """Run a notebook in a fresh process (a kernel's event loop must not share pytest's), with
    PERSONA_DYNAMICS_RUN and `extra` set."""
    out = tmp_path / "executed.ipynb"
    env = {**os.environ, "PERSONA_DYNAMICS_RUN": str(run_dir)}
    env.pop("PERSONA_DYNAMICS_CONFIG", None)
    env.update(extra)
    subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         f"--ExecutePreprocessor.timeout={cell_timeout}",
         "--ExecutePreprocessor.kernel_name=python3", "--output", str(out), str(notebook)],
        cwd=tmp_path, env=env, check=True, timeout=600, capture_output=True,
    )  # fmt: skip
    return nbformat.read(out, as_version=4)


def outputs(nb) -> list[dict]:
    """Every output: the cells' own and those captured in interactive widgets' output areas."""
    out = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    for model in state.get("state", {}).values():
        if model["model_name"] == "OutputModel":
            out += model["state"].get("outputs", [])
    return out


@pytest.mark.slow
def test_axis_explorer_runs_on_a_planted_run(tmp_path):
    cfg = build(tmp_path)
    assert any("parameters" in c.metadata.get("tags", []) for c in nbformat.read(NOTEBOOK, 4).cells)
    nb = execute(tmp_path, cfg.path("analysis"))
    outs = outputs(nb)
    errors = [o for o in outs if o["output_type"] == "error"]
    assert not errors, errors[0]["traceback"][-3:] if errors else None
    figures = [o["data"][PLOTLY] for o in outs if PLOTLY in o.get("data", {})]
    titles = [f["layout"]["title"]["text"] for f in figures]
    for want in ("Movement along", "Roles on PC1-PC2", "Roles along", "cos(PC1", "Explained",
                 "Per-role trajectories", "Persona adapters"):  # fmt: skip
        assert any(t.startswith(want) for t in titles), (want, titles)
    # the headline figure shows the planted stage order: separation falls stage by stage
    move = next(f for f in figures if f["layout"]["title"]["text"].startswith("Movement"))
    sep = next(t for t in move["data"] if t["name"] == "separation")
    assert sep["x"] == list(SHIFT) and np.all(np.diff(sep["y"]) < 0)
    mean = next(t for t in move["data"] if t["name"] == "mean role")
    np.testing.assert_allclose(np.diff(mean["y"]), np.diff(list(SHIFT.values())), rtol=0.02)
    # the widgets' roles plot carries every role name for hovering
    pc = next(f for f in figures if f["layout"]["title"]["text"].startswith("Roles on PC1-PC2"))
    names = {n for t in pc["data"] for n in t.get("customdata") or []}
    assert {f"role{i:02d}@3" for i in range(8)} <= names
    last = nb.cells[-1].outputs[0]["data"]["text/plain"]
    shown = json.loads(last.replace("'", '"'))
    assert shown["stages"] == list(SHIFT) and shown["adapters"] == [ADAPTER] and shown["lead"] == 2


@pytest.mark.slow
def test_axis_explorer_runs_on_the_demo_outputs(demo_run, tmp_path):
    cfg, _ = demo_run
    nb = execute(tmp_path, cfg.path("analysis"))
    outs = outputs(nb)
    errors = [o for o in outs if o["output_type"] == "error"]
    assert not errors, errors[0]["traceback"][-3:] if errors else None
    figures = [o["data"][PLOTLY] for o in outs if PLOTLY in o.get("data", {})]
    move = next(f for f in figures if f["layout"]["title"]["text"].startswith("Movement"))
    mean = next(t for t in move["data"] if t["name"] == "mean role")
    stages = [s for s in mean["x"] if s != "base"]  # the toy plants the order from sft on
    ys = [y for s, y in zip(mean["x"], mean["y"], strict=True) if s != "base"]
    assert stages == ["sft", "dpo", "rlvr-1", "rlvr-2", "instruct"] and ys == sorted(ys)


@pytest.mark.slow
def test_steering_notebook_steers_the_demo(demo_steering, tmp_path):
    cfg, truth = demo_steering
    conf = tmp_path / "demo.toml"
    conf.write_text(dump(cfg))
    # no widgets there, so no per-cell limit short of the run's: its model cells take about 10 s
    # on 2 idle cores and minutes on busy ones
    env = {"PERSONA_DYNAMICS_CONFIG": str(conf), "PERSONA_DYNAMICS_ROOT": str(tmp_path)}
    nb = execute(tmp_path, None, NOTEBOOKS / "steering.ipynb", 600, **env)
    outs = outputs(nb)
    errors = [o for o in outs if o["output_type"] == "error"]
    assert not errors, errors[0]["traceback"][-3:] if errors else None
    figures = [o["data"][PLOTLY] for o in outs if PLOTLY in o.get("data", {})]
    assert [f["layout"]["title"]["text"] for f in figures] == [
        f"Dose-response at layer {truth['steering']['layers'][0]}"
    ]
    last = next(o for o in nb.cells[-1].outputs if o["output_type"] == "execute_result")
    shown = ast.literal_eval(last["data"]["text/plain"])
    grid = sorted(shown["dose"])
    assert grid == truth["steering"]["grid"] and list(shown["caps"]) == ["cap-p25"]
    assert shown["dose"][grid[0]] > shown["dose"][grid[-1]]  # the planted sign
