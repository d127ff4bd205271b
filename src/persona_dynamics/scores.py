"""The scores contract: `scores/<run>/<role>.jsonl` rows, the judge that made them (`judge.json`),
reading them back checked, and the per-role summary.

A row is a transcript key plus `score` (0-3, or null when the judge's answer could not be read),
`judge` and `raw`. Scores of another judge (model, sampling, template or a rubric) are never mixed
into a run's: `check_judge` refuses them, naming what differs. Written by the `judge` stage; read by
analysis (readers.py), `steer` and the report.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

from persona_dynamics import __version__
from persona_dynamics.config import Judge, Study
from persona_dynamics.errors import PersonaDynamicsError, located
from persona_dynamics.files import write_json, write_text
from persona_dynamics.jsonl import check_key, numbered_rows, read_rows
from persona_dynamics.judges import judge_name, judge_prompt
from persona_dynamics.roles import digest, read_json
from persona_dynamics.transcripts import scores_path, selection

log = logging.getLogger(__name__)

SCORES = (0, 1, 2, 3)
JUDGE_MANIFEST = "judge.json"
# What makes two judges the same: scores of another one are never mixed into a run's scores.
IDENTITY = ("judge", "temperature", "max_tokens", "template")
HOW = "delete {dir} to judge again with the config's judge (cached answers cost nothing)"


def judge_identity(jcfg: Judge, rubrics: dict[str, str]) -> dict:
    """The judge as recorded in `judge.json`: model, sampling, prompt template, each rubric."""
    return {
        "judge": judge_name(jcfg),
        "temperature": jcfg.temperature,
        "max_tokens": jcfg.max_tokens,
        "template": digest(judge_prompt("RUBRIC", "QUESTION", "RESPONSE")),
        "rubrics": {role: digest(text) for role, text in sorted(rubrics.items())},
    }


def read_judge(scores_dir: Path) -> dict | None:
    """The recorded judge of a scores directory, or None when there is none (yet)."""
    path = scores_dir / JUDGE_MANIFEST
    if not path.exists():
        return None
    return read_json(path, obj=True)


def check_judge(scores_dir: Path, identity: dict) -> None:
    """Refuse scores made by another judge than `identity` (model, sampling, template, a rubric).

    Score files older than `judge.json` are taken as the config's judge when every row's `judge`
    field names it, and refused otherwise. Without score files there is nothing to check.
    """
    files = sorted(scores_dir.glob("*.jsonl"))
    old = read_judge(scores_dir)
    if not files:  # no scores to mix with: whatever judge.json says is replaced
        return
    if old is None:
        for path in files:
            other = {r.get("judge") for r in read_rows(path)} - {identity["judge"]}
            if other:
                raise PersonaDynamicsError(
                    f"{path}: scored by judge {', '.join(map(repr, sorted(other, key=str)))}, "
                    f"but the config's judge is {identity['judge']!r}; "
                    + HOW.format(dir=scores_dir)
                )
        return
    diff = [
        f"{k}: recorded {old.get(k)!r}, now {identity[k]!r}"
        for k in IDENTITY
        if old.get(k) != identity[k]
    ]
    recorded = old.get("rubrics") or {}
    changed = [r for r, d in identity["rubrics"].items() if r in recorded and recorded[r] != d]
    if changed:
        diff.append(f"rubric (eval_prompt) of {', '.join(changed[:5])} changed")
    if diff:
        raise PersonaDynamicsError(
            f"{scores_dir / JUDGE_MANIFEST}: the scores here come from another judge "
            f"({'; '.join(diff)}); " + HOW.format(dir=scores_dir)
        )


def check_scores_judge(cfg: Study) -> None:
    """Refuse, before analysis reads them, scores whose recorded judge is not the config's."""
    out = scores_path(cfg)
    old = read_judge(out)
    if old is None:
        log.warning(
            "%s: no %s (scores written before judges were recorded): taken as scored by the "
            "config's judge %s", out, JUDGE_MANIFEST, judge_name(cfg.judge),
        )  # fmt: skip
        return
    roles, _ = selection(cfg)
    rubrics = {r.name: r.eval_prompt for r in roles if r.name in (old.get("rubrics") or {})}
    check_judge(out, judge_identity(cfg.judge, rubrics))


def write_judge(scores_dir: Path, identity: dict, preset: dict | None = None) -> Path:
    """Record (atomically) the judge of a scores directory; rubrics accumulate over roles."""
    old = (read_judge(scores_dir) if any(scores_dir.glob("*.jsonl")) else None) or {}
    rubrics = {**(old.get("rubrics") or {}), **identity["rubrics"]}
    out = {
        **identity,
        "rubrics": dict(sorted(rubrics.items())),
        **(preset or {}),
        "package_version": __version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return write_json(scores_dir / JUDGE_MANIFEST, out, indent=2, sort_keys=True)


# --- reading and summarising ---------------------------------------------------------------------


def load_scores(scores_dir: str | Path) -> dict[tuple[str, int, int, int], int | None]:
    """Every score of a run: (role, system_prompt_idx, question_idx, rollout_idx) -> 0-3 or None."""
    scores_dir = Path(scores_dir)
    if not scores_dir.is_dir():
        raise PersonaDynamicsError(f"{scores_dir}: no scores here; run `persona-dynamics judge`")
    out = {}
    for path in sorted(scores_dir.glob("*.jsonl")):
        for n, row in numbered_rows(path):
            key = check_key(path, n, row)
            if "score" not in row:
                raise PersonaDynamicsError(located(path, "no 'score'", n))
            score = row["score"]
            if score is not None:
                if type(score) not in (int, float) or score not in SCORES:  # not "3", 7, true
                    raise PersonaDynamicsError(
                        located(path, f"score {score!r} is not one of 0-3 or null", n)
                    )
                score = int(score)
            out[(path.stem, *key)] = score
    return out


def summarize(scores: dict[tuple, int | None]) -> list[dict]:
    """Per role: how many were scored, the count of each score, nulls, and the mean score."""
    by_role: dict[str, list[int | None]] = {}
    for key, s in scores.items():
        by_role.setdefault(key[0], []).append(s)
    out = []
    for role in sorted(by_role):
        vals = by_role[role]
        known = [v for v in vals if v is not None]
        row = {"role": role, "n": len(vals)}
        row.update({str(s): sum(v == s for v in vals) for s in SCORES})
        row["null"] = len(vals) - len(known)
        row["mean"] = round(sum(known) / len(known), 3) if known else None
        out.append(row)
    return out


def write_summary(scores_dir: Path) -> list[dict]:
    """Write `summary.csv` (per-role score distribution) beside the scores; return its rows."""
    rows = summarize(load_scores(scores_dir))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["role", "n", *map(str, SCORES), "null", "mean"])
    w.writeheader()
    w.writerows(rows)
    write_text(scores_dir / "summary.csv", buf.getvalue())
    return rows


def format_table(rows: list[dict]) -> str:
    """The summary as an aligned text table with a total line."""
    cols = ["role", "n", *map(str, SCORES), "null", "mean"]
    total = {c: sum(r[c] for r in rows) for c in cols[1:-1]}
    known = sum(total[str(s)] for s in SCORES)
    mean = sum(s * total[str(s)] for s in SCORES) / known if known else None
    body = [*rows, {"role": "all", **total, "mean": None if mean is None else round(mean, 3)}]
    cells = [[str("-" if r[c] is None else r[c]) for c in cols] for r in body]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{widths[0]}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*cols), *(fmt.format(*c) for c in cells)]
    return "\n".join(lines)
