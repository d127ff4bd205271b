"""The `judge` stage: score every role transcript 0-3 with an LLM, robustly and resumably.

The judge is asked through judges.py (prompt, parsing, backends, answer cache); what it writes is
scores.py's contract. Cached answers cost nothing and scored keys are skipped, so a killed run loses
nothing; the judge's identity is checked before anything is asked.
"""

from __future__ import annotations

import logging
from pathlib import Path

from persona_dynamics.config import Study
from persona_dynamics.errors import Interrupted, PersonaDynamicsError
from persona_dynamics.jsonl import KEY, Appender, existing_keys, key_of, read_rows
from persona_dynamics.judges import (
    cache_path,
    judge_name,
    judge_prompt,
    make_judge,
    parse_score,
    prompt_hash,
    read_cache,
)
from persona_dynamics.lock import hold, lock_file
from persona_dynamics.roles import DEFAULT
from persona_dynamics.scores import check_judge, judge_identity, write_judge, write_summary
from persona_dynamics.transcripts import read_selection, scores_path, selection, transcripts_dir

log = logging.getLogger(__name__)

CHUNK = 32  # answers per durable write


def run_judge(cfg: Study) -> Path:
    """Score every role transcript of the study not scored yet; return the scores directory.

    Default-Assistant transcripts are not judged. Stops with an error, everything so far kept,
    when the budget (judge.max_requests) would be exceeded.
    """
    jcfg = cfg.judge
    if jcfg is None:
        raise PersonaDynamicsError("the config has no [judge] section (judge model and backend)")
    tdir = transcripts_dir(cfg)
    roles, questions = selection(cfg)
    judged = {role: qs for role, qs in questions.items() if role != DEFAULT}
    rows = read_selection(cfg, tdir, judged)
    if not rows:
        raise PersonaDynamicsError(
            f"{tdir}: nothing to judge: the selection (roles.include = {cfg.roles.include}) "
            "holds no role transcripts, and the default Assistant's are not judged"
        )
    rubric = {r.name: r.eval_prompt for r in roles if r.name in {x["role"] for x in rows}}
    out = scores_path(cfg)
    with hold(lock_file(out, "judge")):
        return _score(cfg, rows, rubric, out)


def _score(cfg: Study, rows: list[dict], rubric: dict[str, str], out: Path) -> Path:
    """Judge under the run lock: check the judge's identity, then ask for what is not scored."""
    jcfg = cfg.judge
    identity = judge_identity(jcfg, rubric)
    check_judge(out, identity)
    scored = {role: existing_keys(out / f"{role}.jsonl") for role in rubric}
    todo = [r for r in rows if key_of(r) not in scored[r["role"]]]
    name = judge_name(jcfg)
    cache = read_cache(cache_path(cfg, jcfg))
    preset = {"preset": cfg.preset, "preset_departures": cfg.departures()}
    write_judge(out, identity, preset)  # once every file it reads has been read
    items, hashes, hits = [], {}, []
    for r in todo:
        question = next(m["content"] for m in reversed(r["messages"]) if m["role"] == "user")
        msgs = judge_prompt(rubric[r["role"]], question, r["response"])
        key = (r["role"], *key_of(r))
        hashes[key] = prompt_hash(msgs, jcfg)
        if hashes[key] in cache:
            hits.append((key, cache[hashes[key]]))
        else:
            items.append((key, msgs))
    budget = jcfg.max_requests if jcfg.max_requests is not None else len(items)
    left = items[budget:]
    log.info(
        "judging %d transcripts with %s: %d already scored, %d cached, %d to ask",
        len(rows),
        name,
        len(rows) - len(todo),
        len(hits),
        len(items),
    )
    writers: dict[str, Appender] = {}
    try:
        write = _writer(writers, out, name)
        write(hits)
        if items[:budget]:
            _ask(make_judge(jcfg), items[:budget], hashes, write, cache_path(cfg, jcfg))
    except KeyboardInterrupt:
        kept = sum(len(read_rows(out / f"{role}.jsonl")) for role in rubric)
        raise Interrupted(f"{kept} of {len(rows)} transcripts scored, kept in {out}") from None
    finally:
        for w in writers.values():
            w.close()
    summary = write_summary(out)
    nulls = sum(s["null"] for s in summary)
    if nulls:
        log.warning(
            "%d of %d judge answers could not be parsed (score null, raw kept)",
            nulls,
            sum(s["n"] for s in summary),
        )
    if left:
        raise PersonaDynamicsError(
            f"judge budget of {jcfg.max_requests} requests reached: {len(left)} transcripts left "
            f"unscored in {out}; run again to continue (scored and cached ones cost nothing)"
        )
    return out


def _writer(writers: dict[str, Appender], out: Path, name: str):
    """A function that appends (key, raw) answers as score rows, one file per role."""

    def write(answers: list[tuple[tuple, str]]) -> None:
        by_role: dict[str, list[dict]] = {}
        for (role, spi, qi, ri), raw in answers:
            row = dict(zip(KEY, (spi, qi, ri), strict=True))
            by_role.setdefault(role, []).append(
                {**row, "score": parse_score(raw), "judge": name, "raw": raw}
            )
        for role, rows in by_role.items():
            if role not in writers:
                writers[role] = Appender(out / f"{role}.jsonl")
            writers[role].write(rows)

    return write


def _ask(judge, items, hashes, write, cache_file: Path) -> None:
    """Send the items to the judge, writing answers and cache entries every CHUNK answers."""
    from tqdm import tqdm

    with Appender(cache_file) as cache, tqdm(total=len(items), unit="answer", desc="judge") as bar:
        chunk: list[tuple[tuple, str]] = []

        def flush() -> None:
            write(chunk)
            cache.write({"prompt_hash": hashes[k], "raw": raw} for k, raw in chunk)
            bar.update(len(chunk))
            chunk.clear()

        for key, raw in judge.answer(items):
            chunk.append((key, raw))
            if len(chunk) >= CHUNK:
                flush()
        flush()
