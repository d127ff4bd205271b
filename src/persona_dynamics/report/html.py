"""The study's report: one self-contained HTML file (plotly.js inline, works offline) plus PNGs.

`run_report(cfg)` reads the run's analysis files (report.data), builds every figure
(report.plots) and writes `<output_root>/reports/<run>/report.html` with one PNG per figure in
`png/` beside it. The page says how it was made (run, reference, model, judge scores or not,
bootstrap, seed, versions); an unscored analysis is flagged at the top. Every figure's element
has a stable id (`plot-...`), every table too (`table-...`), so a browser test can find them.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path

from tqdm import tqdm

from persona_dynamics import __version__
from persona_dynamics.config import Study
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.files import write_text
from persona_dynamics.lock import hold, lock_file
from persona_dynamics.report import data, plots, use
from persona_dynamics.report.data import Run

log = logging.getLogger(__name__)

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222;
       padding: 0 1em; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.55em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr.paper td { background: #fbf7e9; font-style: italic; }
tr.reference td:first-child { font-weight: bold; }
.warning { background: #fdecea; border: 2px solid #d62728; padding: 0.8em 1em; font-weight: bold; }
.toy { background: #eef4fb; border: 2px solid #1f77b4; padding: 0.8em 1em; }
.note { color: #555; font-size: 0.92em; } .plot { margin: 1em 0; }
"""

HELP = {
    "plot-axis-movement": "Each stage's vectors projected into the reference space: the mean role "
    "and the default Assistant on the reference Assistant Axis (raw units), and the scale-free "
    "separation (p(default) - mean p(roles)) / std p(roles), which residual-norm growth across "
    "stages cannot fake. Bars: 95% bootstrap intervals over questions.",
    "plot-role-trajectories": "Every role's projection and z-score on the reference axis across "
    "stages (one vector per role: the axis category's, or the role's only vector unscored); the "
    "default Assistant in bold (its z-score is the separation).",
    "plot-variance": "Explained variance ratio of the persona space's PCs (reference checkpoint), "
    "with the cumulative share against the 70% the paper counts PCs to.",
    "plot-cos-layers": "Cosine between PC1 and the Assistant Axis at every analyzed layer, with "
    "95% bootstrap intervals; dashed: the paper's > 0.71 at the middle layer, dotted: > 0.60.",
    "plot-roles-pc": "Role vectors on the first two PCs of the reference space; the star is the "
    "default Assistant. Hover a point for its role.",
    "plot-axis-ranking": "Role vectors ordered by their projection on the Assistant Axis "
    "(reference checkpoint), with 95% bootstrap intervals; the Assistant at the top.",
    "plot-adapters": "Each persona adapter's default vector in the reference space, from its "
    "base checkpoint's default (star), measured on the reference transcripts (reference-text) "
    "and on its own answers (own-text); right: the shift along the axis with 95% intervals.",
}


def run_report(cfg: Study) -> Path:
    """Write the run's HTML report and PNGs; return the HTML file's path."""
    out = Path(cfg.report.dir or cfg.path("reports"))
    run = data.run_of(cfg)
    with hold(lock_file(out, "report")):
        return write_report(run, out, cfg.report.layer, cfg.report.png)


def write_report(run: Run, out: Path, layer: int | None = None, png: bool = True) -> Path:
    """Render a loaded run into `out/report.html` (and `out/png/<plot id>.png`)."""
    layer = run.lead if layer is None else layer
    if layer not in run.spaces:
        raise PersonaDynamicsError(
            f"report.layer {layer} was not analyzed (analyzed: {run.layers})"
        )
    figures = figures_of(run, layer)
    out.mkdir(parents=True, exist_ok=True)
    if png:
        for key, fig in tqdm(figures.items(), desc="png", leave=False):
            plots.write_png(fig, out / "png" / f"{key}.png")
    path = write_text(out / "report.html", render(run, layer, figures))
    log.info("report: wrote %s", path)
    return path


def figures_of(run: Run, layer: int) -> dict:
    """Every figure this run's files allow, by element id."""
    out = {}
    for key, (_, build, needs_compare) in plots.FIGURES.items():
        if needs_compare and not run.compared:
            continue
        if key == "plot-adapters" and not run.placed:
            continue
        out[key] = build(run, layer)
    for other in run.across:
        out[f"plot-across-{other}"] = plots.across(run, other)
    for key, (_, build, rows) in use.FIGURES.items():
        if getattr(run, rows):
            out[key] = build(run, layer)
    return out


# --- page ----------------------------------------------------------------------------------------


def render(run: Run, layer: int, figures: dict) -> str:
    """The whole page as one string: plotly.js once in the head, then every section."""
    from plotly.offline import get_plotlyjs

    title = f"Persona dynamics: {run.summary['run']}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p>model <b>{_e(run.summary.get('model'))}</b>, "
        f"reference checkpoint <b>{_e(run.reference)}</b>, layer {layer} "
        f"(lead layer {run.lead})</p>",
    ]
    if run.toy:
        body.append(toy_note(run.toy))
    if not run.scored:
        body.append(
            '<div class="warning" id="unscored">Unscored analysis: '
            f"{_e(run.summary.get('note') or 'no judge scores')}. Role vectors mix in-role and "
            "out-of-role answers; add a [judge] section and run "
            "<code>persona-dynamics judge</code> for the paper's filtered vectors.</div>"
        )
    body += _stages(run, layer, figures)
    body += _space(run, layer, figures)
    body += _adapters(run, layer, figures)
    body += _across(run, figures)
    body += _use(run, figures)
    body += _provenance(run)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{STYLE}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>\n<body>\n'
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def toy_note(truth: dict) -> str:
    """Says plainly that the run is on the toy organism, and what its build planted."""
    order, fractions = truth["geometry"]["order"], truth["expected_effect"]
    closes = ", ".join(f"{_e(s)} {f:.2f}" for s, f in fractions.items())
    return (
        '<div class="toy" id="toy"><b>Toy organism.</b> This run\'s model is a toy checkpoint '
        f"(recipe v{_e(truth.get('version'))}) whose structure was planted by training, "
        "recorded in toy.json: the roles lie along the role-to-Assistant direction by planted "
        f"likeness (nearest {_e(', '.join(order[:3]))}; farthest {_e(', '.join(order[-3:]))}), "
        f"the default Assistant at {truth['geometry']['default_position_pc1']:.2f} of PC1's "
        f"role range, and each later stage closes a planted share of the role-to-Assistant gap "
        f"({closes}).{_later_plants(truth)} Agreement with the paper here shows the suite "
        "recovers planted structure; it is not a finding about language models.</div>"
    )


def _later_plants(truth: dict) -> str:
    """The toy note's sentences on the steering, drift and trait plants the build has."""
    out = ""
    if "steering" in truth:
        st = truth["steering"]
        out += (
            f" Adding c times the axis (in mean-norm units) at layer {_e(st['layers'][0])} moves "
            f"the judge's score a step toward the Assistant per {st['step']:g} of c."
        )
    if "drift" in truth:
        falls = {f: v for f, v in truth["drift"]["per_turn"].items() if v < 0}
        out += (
            " Over the shipped drift scripts the Assistant leaves its end of the axis turn by "
            "turn in "
            + ", ".join(f"{_e(f)} ({v:+.2f} D per turn)" for f, v in falls.items())
            + " and holds in the others."
        )
    if "traits" in truth:
        names = ", ".join(_e(n) for n in truth["traits"]["traits"])
        out += f" System prompts induce the traits {names} along planted directions."
    return out


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _num(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _ci(triple) -> str:
    v, lo, hi = triple
    if v is None or not math.isfinite(v):
        return "—"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi == v:
        return _num(v)
    return f"{_num(v)} [{_num(lo)}, {_num(hi)}]"


def _table(tid: str, head: list[str] | None, rows: list[list[str]], classes=None) -> str:
    """An HTML table (no header row without `head`); cells are already-escaped strings."""
    out = [f'<table id="{tid}">']
    if head:
        out.append("<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>")
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    return "\n".join(out) + "</table>"


def _plot(key: str, figures: dict) -> list[str]:
    fig = figures[key]
    div = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=key,
        config={"displaylogo": False, "responsive": True},
    )
    note = HELP.get(key)
    return [f'<div class="plot">{div}</div>'] + (
        [f'<p class="note">{_e(note)}</p>'] if note else []
    )


def _stages(run: Run, layer: int, figures: dict) -> list[str]:
    out = ["<h2>Across training stages</h2>"]
    if not run.compared:
        return out + [
            '<p class="note" id="no-compare">No comparison yet: run '
            "<code>persona-dynamics compare</code> to project every checkpoint into the "
            "reference space.</p>",
            stage_tables(run, layer),
        ]
    out += _plot("plot-axis-movement", figures)
    out.append(stage_tables(run, layer))
    out += _plot("plot-role-trajectories", figures)
    return out


AGREES = {True: "yes", False: "no", None: "—"}

STAGE_COLUMNS = {  # stage_table key -> (header, the paper's figure)
    "n_pcs": ("PCs for 70% variance", "4 to 19"),
    "cos_pc1_axis": ("cos(PC1, axis)", "&gt; 0.71 middle layer, &gt; 0.60 all"),
    "position_pc1": ("Assistant on PC1 (0-1)", "0.03 from an extreme"),
    "axis_mean": ("mean role p(v)", "—"),
    "axis_default": ("default p(v)", "—"),
    "separation": ("separation", "—"),
    "axis_cos": ("axis cos with reference", "—"),
    "loading_corr_pc1": ("role-loading corr. PC1 with reference", "&gt; 0.92 between models"),
}


def stage_tables(run: Run, layer: int) -> str:
    """The per-stage statistics table and the reference-beside-the-paper table, as HTML."""
    head = ["stage"] + [h for h, _ in STAGE_COLUMNS.values()]
    rows, classes = [], []
    for r in data.stage_table(run, layer):
        name = _e(r["label"]) + (" (reference)" if r["reference"] else "")
        rows.append([name] + [_ci(r[k]) for k in STAGE_COLUMNS])
        classes.append("reference" if r["reference"] else "")
    rows.append(["paper (Lu et al.)"] + [p for _, p in STAGE_COLUMNS.values()])
    classes.append("paper")
    out = [
        f"<h3>The paper's statistics per stage (layer {layer})</h3>",
        _table("table-stages", head, rows, classes),
        '<p class="note">Values with 95% bootstrap intervals over questions. The first three '
        "columns describe each stage's own persona space (PCA refit on its vectors, signs "
        "aligned to the reference); p(v), separation, axis and loading agreement are measured "
        "in the reference space.",
    ]
    if run.compared and not any(r["space"] == "refit" for r in run.labels):
        out[-1] += (
            " The own-space columns of the other stages need <code>analysis.refit = true</code> "
            "(<code>compare --refit</code>)."
        )
    out[-1] += "</p>"
    paper = [
        [_e(p["statistic"]), _num(p["layer"]), _ci((p["value"], p["lo"], p["hi"])), _e(p["paper"]),
         AGREES[p.get("agrees")]]
        for p in run.summary.get("paper", [])
    ]  # fmt: skip
    head = ["statistic", "layer", "this run", "the paper", "agrees"]
    out += [
        f"<h3>Reference space beside the paper ({_e(run.reference)}, lead layer {run.lead})</h3>",
        _table("table-paper", head, paper),
        '<p class="note">"agrees": the point value lies in the range that stands for the '
        "paper's finding (PCs 3-20; cos &gt; 0.71 and &gt; 0.60; within 0.05 of PC1's end; "
        "0.15-0.50 from the ends on PCs 2-10).</p>",
    ]
    return "\n".join(out)


def _space(run: Run, layer: int, figures: dict) -> list[str]:
    out = ["<h2>The reference persona space and the Assistant Axis</h2>"]
    for key in ("plot-variance", "plot-cos-layers", "plot-roles-pc", "plot-axis-ranking"):
        out += _plot(key, figures)
    return out


def _adapters(run: Run, layer: int, figures: dict) -> list[str]:
    out = ["<h2>Persona adapters</h2>"]
    if not run.adapters:
        return out + [
            '<p class="note" id="no-adapters">No adapters in this run (no checkpoint '
            "has <code>adapter</code> set).</p>"
        ]
    if "plot-adapters" not in figures:
        names = ", ".join(_e(x) for x in run.adapters)
        return out + [
            f'<p class="note" id="no-adapters">Adapters {names} are not placed yet: '
            "run <code>persona-dynamics adapters place</code>.</p>"
        ]
    out += _plot("plot-adapters", figures)
    rows = []
    for p in data.placements(run, layer):
        near = ", ".join(f"{_e(v)} ({_num(c)})" for v, c, _, _ in p["nearest"][:3])
        rows.append(
            [
                _e(p["adapter"]),
                _e(p["base"]),
                _e(p["text"]),
                _ci(p["axis_shift"]),
                _ci(p["axis"]),
                *(_ci(p[f"pc{j}"]) for j in (1, 2, 3)),
                near,
                _num(p.get("nearest_share", (math.nan,))[0]),
            ]
        )
    head = [
        "adapter",
        "base",
        "text",
        "shift along the axis",
        "p(default)",
        "PC1",
        "PC2",
        "PC3",
        "nearest role vectors (cos)",
        "nearest stable in replicates",
    ]
    return out + [_table("table-adapters", head, rows)]


ACROSS_PAPER = {
    "n_vectors": "377 to 463",
    "n_pcs_target": "4 to 19",
    "cos_pc1_axis": "&gt; 0.71 (middle layer)",
    "extreme_distance_pc1": "0.03",
    "pc1_variance": "—",
    "axis_norm": "—",
}


def _across(run: Run, figures: dict) -> list[str]:
    if not run.across:
        return []
    out = ["<h2>Across models (role-loading correlation, not projection)</h2>"]
    for other, rep in run.across.items():
        out += _plot(f"plot-across-{other}", figures)
        rows = []
        for stat, paper in ACROSS_PAPER.items():
            by = rep["side_by_side"].get(stat, {})
            cells = [
                _ci(tuple((by.get(r) or {}).get(k) for k in ("value", "lo", "hi")))
                for r in rep["runs"]
            ]
            rows.append([_e(stat), *cells, paper])
        for p in rep.get("paper", []):
            rows.append(
                [_e(p["statistic"]), _ci((p["value"], p["lo"], p["hi"])), "", _e(p["paper"])]
            )
        head = ["statistic (lead layers)", *(_e(r) for r in rep["runs"]), "the paper"]
        out.append(_table(f"table-across-{_e(other)}", head, rows))
    return out


def _use(run: Run, figures: dict) -> list[str]:
    """Steering, drift and trait sections, for the stages that have run."""
    out = []
    if run.dose:
        out += [
            '<h2 id="steering">Steering along the axis</h2>',
            *_plot("plot-dose-response", figures),
        ]
        head = ["setting", "mode", "coefficient", "percentile", "role", "n", "score (95% CI)",
                "length", "same tokens", "perplexity"]  # fmt: skip
        rows = [[_e(r["setting"]), _e(r["mode"]), _num(r["coefficient"]), _num(r["percentile"]),
                 _e(r["role"]), _num(r["n"]), _ci((r["score_mean"], r["score_lo"], r["score_hi"])),
                 _num(r["length_mean"]), _num(r["same_tokens"]), _num(r["perplexity"])]
                for r in run.dose]  # fmt: skip
        out.append(_table("table-dose-response", head, rows))
    if run.drift:
        out += [
            '<h2 id="drift">Persona drift over conversations</h2>',
            *_plot("plot-drift", figures),
        ]
        head = ["label", "domain", "layer", "slope per turn (95% CI)", "conversations"]
        rows = [[_e(r["label"]), _e(r["domain"]), _num(r["layer"]),
                 _ci((r["slope"], r["slope_lo"], r["slope_hi"])), _num(r["n_conversations"])]
                for r in run.slopes]  # fmt: skip
        out.append(_table("table-drift-slopes", head, rows))
    if run.traits:
        out.append('<h2 id="traits">Trait vectors</h2>')
        head = ["trait", "kept +", "kept -", "held-out AUC (lead layer)", "cos with the axis"]
        lead = str(run.lead)
        rows = [[_e(name), _num(t["n_pos"]), _num(t["n_neg"]), _num(t["auc_heldout"].get(lead)),
                 _num(t.get("cosines", {}).get("axis", {}).get(lead))]
                for name, t in run.traits.items()]  # fmt: skip
        out.append(_table("table-traits", head, rows))
    return out


def _provenance(run: Run) -> list[str]:
    s, m = run.summary, run.meta
    vec = s.get("vectors", {})
    cats = vec.get("by_category", {})
    by_score = ", ".join(f"judge score {k}: {n}" for k, n in cats.items() if k != "-1")
    items = [
        ("run", s.get("run")),
        ("analysis directory", run.dir),
        ("reference checkpoint", run.reference),
        ("model", s.get("model")),
        ("revision", s.get("revision")),
        ("resolved commit", s.get("commit")),
        ("judge scores", "yes" if run.scored else "NO (unscored: " + str(s.get("note")) + ")"),
        ("stages compared", ", ".join(run.stages) or "none (compare not run)"),
        ("adapters", ", ".join(run.adapters) or "none"),
        ("layers analyzed (lead)", f"{', '.join(map(str, run.layers))} ({run.lead})"),
        ("questions (bootstrap unit)", s.get("n_questions")),
        ("bootstrap replicates B", s.get("bootstrap")),
        ("interval level", s.get("level")),
        ("seed", s.get("seed")),
        ("role vectors kept", f"{vec.get('kept')} ({by_score or 'one per role, unscored'})"),
        ("default samples", vec.get("default_samples")),
        ("roles left out", ", ".join(vec.get("roles_left_out", [])) or "none"),
        ("transcripts digest", m.get("transcripts_digest")),
        ("tokens digest", m.get("tokens_digest")),
        ("analysis package version", m.get("version")),
        ("report package version", __version__),
    ]
    rows = [[_e(k), "—" if v is None else _e(v)] for k, v in items]
    return ["<h2>How this report was made</h2>", _table("table-provenance", None, rows)]
