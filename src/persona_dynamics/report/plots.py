"""The report's figures: plotly builders over a loaded run, and a matplotlib PNG writer for them.

Every builder takes a `Run` (report.data) and a layer (None: the run's lead layer) and returns a
`plotly.graph_objects.Figure`; `FIGURES` lists them with the element id the HTML gives each.
`write_png(fig, path)` redraws a figure's traces with matplotlib (the subset of plotly the
builders use: scatter, bar, error bars, horizontal lines, subplot titles), so PNGs need no
browser and show exactly the HTML's numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from persona_dynamics.files import atomic
from persona_dynamics.report import data
from persona_dynamics.report.data import Run
from persona_dynamics.roles import DEFAULT

ASSISTANT = "#d62728"
ROLE = "#1f77b4"
SOMEWHAT = "#8fbce6"
REFERENCE = "#7f7f7f"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
RANKED = 60  # past this many vectors, the ranking shows only both ends
LABEL_GAP = 0.045  # trajectory names at least this share of the y range apart (9 pt at 520 px)
EXTREMES = 3  # roles named at each end of PC1 on the roles plot
BELOW = {"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.22, "yanchor": "top"}
LAYOUT = {
    "template": "plotly_white",
    "font": {"size": 12},
    "margin": {"l": 70, "r": 30, "t": 60, "b": 60},
    "width": 900,
    "height": 460,
}


def _fig(title: str, fig: go.Figure | None = None, **layout) -> go.Figure:
    """A figure in the report's layout; subplot figures get their legend below the plots."""
    below = {}
    if fig is not None:
        below = {"legend": BELOW, "margin": LAYOUT["margin"] | {"b": 130}}
    fig = fig or go.Figure()
    fig.update_layout(**(LAYOUT | below | {"title": {"text": title}} | layout))
    return fig


def _nan_none(values) -> list:
    return [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]


def error_bars(value, lo, hi) -> dict:
    """Asymmetric error bars from point estimates and interval ends (never negative arms)."""
    v, lo, hi = (np.asarray(x, dtype=float) for x in (value, lo, hi))
    up = np.where(np.isfinite(hi - v), np.maximum(hi - v, 0), np.nan)
    down = np.where(np.isfinite(v - lo), np.maximum(v - lo, 0), np.nan)
    return {
        "type": "data",
        "symmetric": False,
        "array": _nan_none(up),
        "arrayminus": _nan_none(down),
        "thickness": 1.2,
        "width": 3,
    }


def _layer(run: Run, layer: int | None) -> int:
    return run.lead if layer is None else int(layer)


def variance(run: Run, layer: int | None = None) -> go.Figure:
    """Explained variance ratio per PC at one layer, with its running total against 70%."""
    layer = _layer(run, layer)
    ratio = run.spaces[layer].explained_variance_ratio
    pcs = [f"PC{i + 1}" for i in range(len(ratio))]
    fig = _fig(f"Explained variance per PC (layer {layer})")
    fig.add_bar(x=pcs, y=ratio.tolist(), name="per PC", marker_color=ROLE)
    fig.add_scatter(
        x=pcs,
        y=np.cumsum(ratio).tolist(),
        name="cumulative",
        mode="lines+markers",
        line={"color": ASSISTANT},
    )
    fig.add_hline(y=0.7, line={"dash": "dash", "color": REFERENCE})
    fig.update_yaxes(title_text="fraction of variance", range=[0, 1.05])
    return fig


def cos_layers(run: Run, layer: int | None = None) -> go.Figure:
    """cos(PC1, Assistant Axis) per layer with bootstrap intervals; the paper's bounds drawn."""
    layer = _layer(run, layer)
    layers = run.layers
    cos = [run.spaces[x].stats["cos_pc1_axis"] for x in layers]
    v, lo, hi = (np.array([c[i] for c in cos]) for i in range(3))
    fig = _fig("cos(PC1, Assistant Axis) per layer")
    fig.add_scatter(
        x=layers,
        y=v.tolist(),
        error_y=error_bars(v, lo, hi),
        mode="lines+markers",
        name="cos",
        line={"color": ROLE},
        showlegend=False,
    )
    i = layers.index(layer)
    fig.add_scatter(
        x=[layer],
        y=[v[i]],
        mode="markers",
        name=f"layer {layer}",
        marker={"color": ASSISTANT, "size": 12, "symbol": "diamond"},
    )
    fig.add_hline(y=0.71, line={"dash": "dash", "color": REFERENCE})
    fig.add_hline(y=0.60, line={"dash": "dot", "color": REFERENCE})
    fig.update_xaxes(title_text="layer (block index)", tickmode="array", tickvals=layers)
    fig.update_yaxes(title_text="cos(PC1, axis)  (paper: > 0.71 middle, > 0.60 all)")
    return fig


def roles_pc(run: Run, layer: int | None = None, roles: list[str] | None = None) -> go.Figure:
    """Role vectors on PC1-PC2 of the reference space; the default Assistant and the roles at
    each end of PC1 named."""
    layer = _layer(run, layer)
    sp = run.spaces[layer]
    fig = _fig(f"Roles on PC1-PC2 (layer {layer}, reference '{run.reference}')", height=560)
    axis_cat = int(run.meta.get("axis_category", 3))
    groups: dict[int, list[int]] = {}
    for i, (role, cat) in enumerate(zip(sp.roles, sp.categories, strict=True)):
        if roles is None or role in roles:
            groups.setdefault(int(cat), []).append(i)
    shown = sorted((i for idx in groups.values() for i in idx), key=lambda i: sp.projections[i, 0])
    ends = set(shown[:EXTREMES] + shown[-EXTREMES:])
    for cat, idx in sorted(groups.items(), reverse=True):
        fig.add_scatter(
            x=sp.projections[idx, 0].tolist(),
            y=sp.projections[idx, 1].tolist() if sp.projections.shape[1] > 1 else [0] * len(idx),
            mode="markers+text",
            name="roles" if cat == -1 else f"roles, judge score {cat}",
            text=[sp.names[i] if i in ends else "" for i in idx],
            customdata=[sp.names[i] for i in idx],
            textposition="bottom center",
            textfont={"size": 10},
            hovertemplate="%{customdata}<br>PC1 %{x:.3g}<br>PC2 %{y:.3g}<extra></extra>",
            marker={"color": ROLE if cat in (axis_cat, -1) else SOMEWHAT, "size": 8},
        )
    d = sp.default_projection
    fig.add_scatter(
        x=[d[0]],
        y=[d[1] if len(d) > 1 else 0],
        mode="markers+text",
        name="Assistant (default)",
        text=["Assistant"],
        textposition="top center",
        hovertemplate="default Assistant<extra></extra>",
        marker={"color": ASSISTANT, "size": 16, "symbol": "star"},
    )
    fig.update_xaxes(title_text="PC1")
    fig.update_yaxes(title_text="PC2")
    return fig


def axis_ranking(run: Run, layer: int | None = None) -> go.Figure:
    """Role vectors ranked by their projection on the Assistant Axis, with intervals."""
    layer = _layer(run, layer)
    r = data.ranking(run, layer)
    n = len(r["names"])
    keep = list(range(n)) if n <= RANKED else [*range(RANKED // 2), *range(n - RANKED // 2, n)]
    title = f"Roles along the Assistant Axis (layer {layer})"
    if len(keep) < n:
        title += f": the {RANKED // 2} at each end of {n}"
    names = [r["names"][i] for i in keep] + ["Assistant (default)"]
    v, lo, hi = (
        np.append(r[k][keep], r["default"][j]) for j, k in enumerate(("value", "lo", "hi"))
    )
    fig = _fig(title, height=max(420, 18 * len(names) + 120), margin=LAYOUT["margin"] | {"l": 150})
    fig.add_scatter(
        x=v[:-1].tolist(),
        y=names[:-1],
        error_x=error_bars(v[:-1], lo[:-1], hi[:-1]),
        mode="markers",
        name="role vectors",
        marker={"color": ROLE, "size": 8},
        hovertemplate="%{y}: %{x:.3g}<extra></extra>",
    )
    fig.add_scatter(
        x=[v[-1]],
        y=names[-1:],
        error_x=error_bars(v[-1:], lo[-1:], hi[-1:]),
        mode="markers",
        name="Assistant (default)",
        marker={"color": ASSISTANT, "size": 14, "symbol": "star"},
        hovertemplate="default Assistant: %{x:.3g}<extra></extra>",
    )
    fig.update_xaxes(title_text="projection on the Assistant Axis, p(v) (activation units)")
    fig.update_yaxes(tickfont={"size": 10}, automargin=True)
    return fig


def axis_movement(run: Run, layer: int | None = None) -> go.Figure:
    """The headline: each stage's mean role and default projections, and the separation."""
    layer = _layer(run, layer)
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.12,
        subplot_titles=(
            "Projection on the reference axis (raw units)",
            "Assistant separation (scale-free)",
        ),
    )
    _fig(f"Movement along the Assistant Axis across training (layer {layer})", fig)
    lines = [
        ("mean role", ROLE, "axis_mean", 1),
        ("default Assistant", ASSISTANT, "axis_default", 1),
        ("separation", "#2ca02c", "separation", 2),
    ]
    for name, color, stat, col in lines:
        s = data.series(run, layer, stat)
        fig.add_scatter(
            x=s["label"],
            y=_nan_none(s["value"]),
            error_y=error_bars(s["value"], s["lo"], s["hi"]),
            mode="lines+markers",
            name=name,
            line={"color": color},
            marker={"size": 9},
            row=1,
            col=col,
        )
    fig.update_yaxes(title_text="p(v)", row=1, col=1)
    fig.update_yaxes(title_text="(p(default) - mean p(roles)) / std", row=1, col=2)
    fig.update_xaxes(title_text="stage", type="category")
    return fig


def spread_labels(ends: dict[str, float], span: float | None = None) -> set[str]:
    """Which lines to name at their ends so no two names overlap: the default always, then roles
    from the most extreme inward, each kept if `LABEL_GAP` of the plotted range `span` (default:
    the ends' range) from every name kept so far."""
    finite = {n: v for n, v in ends.items() if v is not None and np.isfinite(v)}
    if not finite:
        return set()
    values = np.array(list(finite.values()))
    span = span or float(values.max() - values.min()) or 1.0
    middle = float(np.median(values))
    keep = [n for n in finite if n == DEFAULT]
    for name in sorted(finite, key=lambda n: -abs(finite[n] - middle)):
        if name not in keep and all(
            abs(finite[name] - finite[k]) >= LABEL_GAP * span for k in keep
        ):
            keep.append(name)
    return set(keep)


def role_trajectories(
    run: Run, layer: int | None = None, roles: list[str] | None = None
) -> go.Figure:
    """Every role's projection and z-score on the axis across stages; the default in bold."""
    layer = _layer(run, layer)
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.2,
        subplot_titles=("Projection p(v) (raw units)", "z-score among the stage's roles"),
    )
    _fig(
        f"Per-role trajectories across stages (layer {layer})",
        fig,
        height=520,
        showlegend=False,
        margin=LAYOUT["margin"] | {"r": 110},
    )
    tracks = data.trajectories(run, layer, roles)
    named = {}
    for key in ("axis", "z"):
        shown = [v for t in tracks.values() for v in t[key] if v is not None and np.isfinite(v)]
        span = float(max(shown) - min(shown)) if shown else None
        named[key] = spread_labels({n: t[key][-1] for n, t in tracks.items()}, span)
    for i, (name, t) in enumerate(sorted(tracks.items(), key=lambda kv: kv[0] == DEFAULT)):
        default = name == DEFAULT
        style = {
            "color": ASSISTANT if default else PALETTE[i % len(PALETTE)],
            "width": 4 if default else 1.2,
        }
        tag = "Assistant" if default else t["role"]
        for col, key in ((1, "axis"), (2, "z")):
            fig.add_scatter(
                x=t["label"],
                y=_nan_none(t[key]),
                mode="lines+markers+text",
                name=name,
                line=style,
                marker={"size": 8 if default else 4},
                text=[""] * (len(t["label"]) - 1) + [tag if name in named[key] else ""],
                textposition="middle right",
                textfont={"size": 9, "color": style["color"]},
                hovertemplate=f"{name}: %{{y:.3g}}<extra></extra>",
                cliponaxis=False,
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="stage", type="category")
    fig.update_yaxes(title_text="p(v) on the reference axis", row=1, col=1)
    fig.update_yaxes(title_text="z = (p(v) - mean) / std", row=1, col=2)
    return fig


def adapters(run: Run, layer: int | None = None) -> go.Figure:
    """Adapters placed in the reference space: where each default vector moved from its base's."""
    layer = _layer(run, layer)
    sp = run.spaces[layer]
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.14,
        column_widths=[0.6, 0.4],
        subplot_titles=("PC1-PC2 of the reference space", "Shift of the default along the axis"),
    )
    _fig(f"Persona adapters in persona space (layer {layer})", fig, height=540)
    fig.add_scatter(
        x=sp.projections[:, 0].tolist(),
        y=sp.projections[:, 1].tolist(),
        mode="markers",
        name="role vectors",
        text=sp.names,
        marker={"color": SOMEWHAT, "size": 7},
        hovertemplate="%{text}<extra></extra>",
        row=1,
        col=1,
    )
    places = data.placements(run, layer)
    bases = sorted({p["base"] for p in places})
    for base in bases:
        x, y = data.default_pcs(run, base, layer)
        fig.add_scatter(
            x=[x],
            y=[y],
            mode="markers+text",
            text=[f"{base} default"],
            textposition="bottom center",
            name=f"{base} default (base)",
            marker={"color": ASSISTANT, "size": 14, "symbol": "star"},
            hovertemplate=f"{base}: default Assistant<extra></extra>",
            row=1,
            col=1,
        )
    texts = sorted({p["text"] for p in places}, reverse=True)  # reference-text first
    for i, p in enumerate(places):
        color = PALETTE[(i + 1) % len(PALETTE)]
        bx, by = data.default_pcs(run, p["base"], layer)
        name = f"{p['adapter']} ({p['text']})"
        dash = "solid" if texts.index(p["text"]) == 0 else "dot"
        fig.add_scatter(
            x=[bx, p["pc1"][0]],
            y=[by, p["pc2"][0]],
            mode="lines",
            showlegend=False,
            line={"color": color, "dash": dash},
            hoverinfo="skip",
            row=1,
            col=1,
        )
        fig.add_scatter(
            x=[p["pc1"][0]],
            y=[p["pc2"][0]],
            mode="markers",
            name=name,
            marker={"color": color, "size": 13, "symbol": "diamond"},
            hovertemplate=f"{name}<br>nearest: {p['nearest'][0][0] if p['nearest'] else '?'}"
            "<extra></extra>",
            row=1,
            col=1,
        )
        v, lo, hi = p["axis_shift"]
        fig.add_scatter(
            x=[f"{p['adapter']}<br>{p['text']}"],
            y=[v],
            error_y=error_bars([v], [lo], [hi]),
            mode="markers",
            name=name,
            showlegend=False,
            marker={"color": color, "size": 12, "symbol": "diamond"},
            row=1,
            col=2,
        )
    fig.add_hline(y=0, line={"dash": "dash", "color": REFERENCE}, row=1, col=2)
    fig.update_xaxes(title_text="PC1", row=1, col=1)
    fig.update_yaxes(title_text="PC2", row=1, col=1)
    fig.update_yaxes(title_text="p(adapter default) - p(base default)", row=1, col=2)
    return fig


def across(run: Run, other: str) -> go.Figure:
    """Role-loading correlation with another run's space on PC1-3, by relative depth."""
    rep = run.across[other]
    fig = _fig(f"Role-loading correlation: {rep['runs'][0]} vs {rep['runs'][1]}")
    for j, color in zip((1, 2, 3), PALETTE, strict=False):
        rows = sorted(
            (r for r in rep["loading_correlation"] if r["pc"] == j), key=lambda r: r["depth_a"]
        )
        v, lo, hi = (
            [np.nan if r[k] is None else r[k] for r in rows] for k in ("value", "lo", "hi")
        )
        fig.add_scatter(
            x=[r["depth_a"] for r in rows],
            y=_nan_none(v),
            error_y=error_bars(v, lo, hi),
            mode="lines+markers",
            name=f"PC{j}" + (" (|r|)" if j > 1 else ""),
            line={"color": color},
        )
    fig.add_hline(y=0.92, line={"dash": "dash", "color": REFERENCE})
    fig.update_xaxes(title_text=f"relative depth in {rep['runs'][0]} (layer + 1) / layers")
    fig.update_yaxes(title_text="correlation of role loadings (paper PC1: > 0.92)")
    return fig


# id -> (section title, builder, needs compare outputs)
FIGURES = {
    "plot-axis-movement": ("Movement along the Assistant Axis", axis_movement, True),
    "plot-role-trajectories": ("Per-role trajectories", role_trajectories, True),
    "plot-variance": ("Explained variance", variance, False),
    "plot-cos-layers": ("cos(PC1, axis) per layer", cos_layers, False),
    "plot-roles-pc": ("Roles on PC1-PC2", roles_pc, False),
    "plot-axis-ranking": ("Roles ranked along the axis", axis_ranking, False),
    "plot-adapters": ("Adapters in persona space", adapters, True),
}


# --- PNG -----------------------------------------------------------------------------------------

SYMBOLS = {"circle": "o", "star": "*", "diamond": "D", "square": "s", "x": "x", "cross": "P"}
DASHES = {"dash": "--", "dot": ":", "dashdot": "-.", "solid": "-"}


def write_png(fig: go.Figure, path: Path, dpi: int = 110) -> Path:
    """Draw a builder's figure with matplotlib (no browser) and save it as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lay = fig.layout
    w, h = (lay.width or 900) / 100, (lay.height or 460) / 100
    m = lay.margin
    mpl = plt.figure(figsize=(w, h), dpi=dpi)
    left, bottom = m.l / (w * 100), m.b / (h * 100)
    box = (left, bottom, 1 - left - m.r / (w * 100), 1 - bottom - m.t / (h * 100))
    try:
        axes = _axes(fig, mpl, box)
        for tr in fig.data:
            _trace(axes[(tr.xaxis or "x", tr.yaxis or "y")], tr)
        for shape in lay.shapes:
            _shape(axes, shape)
        for ax in axes.values():
            _declutter(ax)
        for ann in lay.annotations:  # subplot titles, placed on the paper
            x, y = box[0] + ann.x * box[2], box[1] + ann.y * box[3]
            mpl.text(x, y + 0.01, ann.text, ha="center", va="bottom", fontsize=9)
        mpl.suptitle(lay.title.text or "", fontsize=11)
        _legend(mpl, axes, lay)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic(path, lambda tmp: mpl.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(mpl)
    return path


def _declutter(ax) -> None:
    """Slant category labels that would overlap at the axes' width (matplotlib does not)."""
    labels = [t.get_text() for t in ax.get_xticklabels()]
    longest = max((len(x) for line in labels for x in line.split("\n")), default=0)
    width_chars = ax.get_position().width * ax.figure.get_figwidth() * 72 / 5  # ~5 pt per char
    if labels and longest * len(labels) > width_chars:
        ax.tick_params(axis="x", labelrotation=30)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")


def _legend(mpl, axes: dict, lay) -> None:
    """Inside the plot for one axes; below the plots (as plotly) when the legend is horizontal."""
    if lay.showlegend is False:
        return
    handles = {}
    for ax in axes.values():
        for hd, lb in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lb, hd)
    if len(handles) < 2:
        return
    if lay.legend.orientation == "h":
        ncol = min(len(handles), 4)
        mpl.legend(handles.values(), handles.keys(), loc="lower center", ncol=ncol, fontsize=8)
    else:
        next(iter(axes.values())).legend(handles.values(), handles.keys(), fontsize=8)


def _axes(fig: go.Figure, mpl, box: tuple[float, float, float, float]) -> dict:
    """One matplotlib axes per (xaxis, yaxis) pair the traces use, placed by their domains."""
    out = {}
    left, bottom, width, height = box
    pairs = {(t.xaxis or "x", t.yaxis or "y") for t in fig.data} or {("x", "y")}
    for xa, ya in sorted(pairs):
        xl = fig.layout[f"xaxis{xa[1:]}"]
        yl = fig.layout[f"yaxis{ya[1:]}"]
        (x0, x1), (y0, y1) = xl.domain or (0, 1), yl.domain or (0, 1)
        ax = mpl.add_axes(
            (left + x0 * width, bottom + y0 * height, (x1 - x0) * width, (y1 - y0) * height)
        )
        ax.set_xlabel(xl.title.text or "", fontsize=9)
        ax.set_ylabel(yl.title.text or "", fontsize=9)
        if yl.range:
            ax.set_ylim(yl.range)
        if xl.tickvals:
            ax.set_xticks(list(xl.tickvals))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        out[(xa, ya)] = ax
    return out


def _trace(ax, tr) -> None:
    label = tr.name if tr.showlegend is not False and tr.name else "_nolegend_"
    if tr.type == "bar":
        ax.bar(list(tr.x), list(tr.y), color=tr.marker.color, label=label)
        return
    x = [v.replace("<br>", "\n") if isinstance(v, str) else v for v in tr.x]
    y = [np.nan if v is None else v for v in tr.y]
    mode = tr.mode or "lines+markers"
    size = tr.marker.size if isinstance(tr.marker.size, int | float) else 6
    style = {
        "color": tr.line.color or tr.marker.color,
        "linestyle": DASHES.get(tr.line.dash or "solid", "-") if "lines" in mode else "none",
        "linewidth": tr.line.width or 1.5,
        "marker": SYMBOLS.get(tr.marker.symbol or "circle", "o") if "markers" in mode else None,
        "markersize": math.sqrt(size) * 2.2,
    }
    xerr, yerr = _mpl_err(tr.error_x), _mpl_err(tr.error_y)
    ax.errorbar(x, y, xerr=xerr, yerr=yerr, label=label, capsize=2, elinewidth=1, **style)
    if "text" in mode and tr.text:
        right = (tr.textposition or "").endswith("right")
        for xi, yi, t in zip(x, y, tr.text, strict=False):
            ax.annotate(
                t,
                (xi, yi),
                textcoords="offset points",
                xytext=(6, 0) if right else (0, 6),
                ha="left" if right else "center",
                va="center" if right else "bottom",
                fontsize=8,
                color=style["color"],
                annotation_clip=False,
            )


def _mpl_err(err):
    if err is None or err.array is None:
        return None
    up = np.array([np.nan if v is None else v for v in err.array], dtype=float)
    down = np.array([np.nan if v is None else v for v in (err.arrayminus or err.array)], float)
    return np.nan_to_num(np.vstack([down, up]))


def _shape(axes: dict, shape) -> None:
    """Horizontal reference lines (add_hline) on the axes they belong to."""
    xref = (shape.xref or "x").split()[0].replace("paper", "x")
    for (xa, ya), ax in axes.items():
        if xa == xref and ya == (shape.yref or "y") and shape.y0 == shape.y1:
            ax.axhline(
                shape.y0,
                color=shape.line.color or REFERENCE,
                linestyle=DASHES.get(shape.line.dash or "solid", "-"),
                linewidth=1,
            )
