"""The report's figures for using the axis: steering dose-response and persona drift.

Builders take a loaded `Run` (report.data) whose `dose` / `drift` rows came from the steering
and drift stages, and return plotly figures the PNG writer in plots.py can redraw (scatter, error
bars). Shown only when the run has those files.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from persona_dynamics.report.data import Run
from persona_dynamics.report.plots import ASSISTANT, LAYOUT, PALETTE, ROLE, error_bars
from persona_dynamics.roles import DEFAULT


def _finite(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def dose_response(run: Run, layer: int | None = None) -> go.Figure:
    """Role-expression score (mean over roles, interval of the mean) per additive coefficient,
    with each cap as a marker at its percentile-free position, and the baseline at c = 0."""
    fig = go.Figure()
    by_setting: dict[str, list[dict]] = {}
    for r in run.dose:
        by_setting.setdefault(r["setting"], []).append(r)
    points = []
    for name, rows in by_setting.items():
        scored = [r for r in rows if r["role"] != DEFAULT and _finite(r["score_mean"])]
        if not scored:
            continue
        mode = rows[0]["mode"]
        c = 0.0 if mode == "none" else rows[0]["coefficient"]
        mean = float(np.mean([r["score_mean"] for r in scored]))
        lo = float(np.mean([r["score_lo"] for r in scored]))
        hi = float(np.mean([r["score_hi"] for r in scored]))
        points.append((mode, name, c, mean, lo, hi, rows[0]["perplexity"]))
    adds = sorted((p for p in points if p[0] in ("add", "none")), key=lambda p: p[2])
    if adds:
        fig.add_trace(go.Scatter(
            x=[p[2] for p in adds], y=[p[3] for p in adds], mode="lines+markers", name="added c·v",
            marker={"color": ROLE}, text=[p[1] for p in adds],
            error_y=error_bars([p[3] for p in adds], [p[4] for p in adds], [p[5] for p in adds]),
        ))  # fmt: skip
    for k, p in enumerate(p for p in points if p[0] not in ("add", "none")):
        fig.add_trace(go.Scatter(
            x=[0.0], y=[p[3]], mode="markers", name=p[1], marker={"color": PALETTE[k % 8],
            "symbol": "diamond", "size": 11}, error_y=error_bars([p[3]], [p[4]], [p[5]]),
        ))  # fmt: skip
    fig.update_layout(**LAYOUT, title="Steering dose-response (mean over roles, 95% interval)",
                      xaxis_title="coefficient c (norm units unless the setting says raw)",
                      yaxis_title="judge score (0-3)")  # fmt: skip
    return fig


def drift(run: Run, layer: int | None = None) -> go.Figure:
    """Mean projection per turn for each domain (reference label at the lead layer)."""
    layer = run.lead if layer is None else layer
    rows = [r for r in run.drift if r["layer"] == layer and r["label"] == run.reference]
    if not rows:  # the reference was not run: the first label present
        first = run.drift[0]["label"] if run.drift else None
        rows = [r for r in run.drift if r["layer"] == layer and r["label"] == first]
    fig = go.Figure()
    for k, domain in enumerate(sorted({r["domain"] for r in rows})):
        turns = sorted({r["turn"] for r in rows if r["domain"] == domain})
        ys = [np.nanmean([r["projection"] for r in rows
                          if r["domain"] == domain and r["turn"] == t]) for t in turns]  # fmt: skip
        fig.add_trace(go.Scatter(x=turns, y=ys, mode="lines+markers", name=domain,
                                 marker={"color": PALETTE[k % 8]}))  # fmt: skip
    default = run.spaces[layer].default_axis if layer in run.spaces else None
    if default is not None and _finite(default):
        fig.add_hline(y=default, line={"color": ASSISTANT, "dash": "dot"},
                      annotation_text="default Assistant (reference text)")  # fmt: skip
    title = f"Persona drift on the axis, layer {layer}"
    fig.update_xaxes(dtick=1)
    fig.update_layout(**LAYOUT, title=title, xaxis_title="assistant turn",
                      yaxis_title="projection on the axis")  # fmt: skip
    return fig


FIGURES = {
    "plot-dose-response": ("Steering dose-response", dose_response, "dose"),
    "plot-drift": ("Persona drift over turns", drift, "drift"),
}
