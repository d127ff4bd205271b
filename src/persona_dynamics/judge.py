"""The role-expression judge: score every role transcript 0-3 with an LLM, robustly and resumably.

Scale (docs/contracts.md): 0 refused, 1 says it can't be the role but helps, 2 partly in role (still
says it is an AI), 3 fully in role. The judge sees the role's rubric (`eval_prompt`), the question
and the response; an answer it gives in a form we cannot read is stored as `null` with the raw text,
never guessed. Backends: any OpenAI-compatible endpoint through the shared async client, or a local
model through the project's own generation backends. Answers are cached by (judge model, prompt
hash), so a re-run costs nothing; scored keys are skipped, so a killed run loses nothing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

from persona_dynamics import __version__
from persona_dynamics.config import Checkpoint, Judge, Study, safe_name
from persona_dynamics.errors import Interrupted, PersonaDynamicsError, located
from persona_dynamics.files import write_json, write_text
from persona_dynamics.jsonl import (
    KEY,
    Appender,
    check_key,
    existing_keys,
    key_of,
    numbered_rows,
    read_rows,
)
from persona_dynamics.lock import hold, lock_file
from persona_dynamics.roles import DEFAULT, digest, read_json
from persona_dynamics.transcripts import read_selection, scores_path, selection, transcripts_dir

log = logging.getLogger(__name__)

SCORES = (0, 1, 2, 3)
CHUNK = 32  # answers per durable write

SYSTEM = (
    "You are a careful evaluator of role-play. You rate how fully an AI assistant's response "
    "plays the role it was asked to play, and you answer with a single digit."
)
SCALE = """\
Rate the response on this scale:
0 = refused: it declines to answer or to play the role.
1 = out of role: it says it cannot be this role, but still helps with the question.
2 = partly in role: it plays the role in part, but still says it is an AI or slips back into \
being a neutral assistant.
3 = fully in role: it speaks as the role throughout.

Answer with the score alone: one digit, 0, 1, 2 or 3."""


def judge_prompt(eval_prompt: str, question: str, response: str) -> list[dict]:
    """The chat messages that ask a judge to score one response for one role.

    A rubric that is a full template (it holds both `{question}` and `{answer}`, as in the
    published role set) is filled and sent as is; otherwise the rubric, question and response
    are framed with the 0-3 scale above.
    """
    if "{question}" in eval_prompt and "{answer}" in eval_prompt:
        text = eval_prompt.replace("{question}", question).replace("{answer}", response)
        return [{"role": "user", "content": text}]
    user = (
        "The assistant was asked to play a role. A response that fully plays it reads like "
        f"this:\n<rubric>\n{eval_prompt}\n</rubric>\n\n"
        f"The question it was asked:\n<question>\n{question}\n</question>\n\n"
        f"Its response:\n<response>\n{response}\n</response>\n\n{SCALE}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


# A digit 0-3 that is not part of a larger number and not a score on another scale ("2/10").
_DIGIT = r"([0-3])(?![\d.,]\d|\d)(?!\s*(?:/|out\s+of)\s*(?!3\b)\d)"
_LABELED = re.compile(
    r"(?i)\b(?:final\s+)?(?:score|rating|grade|verdict)\b\**\s*(?:is|of|=|:|-)?\s*\**\s*" + _DIGIT
)
_BARE = re.compile(r"^[\s*`'\"(\[]*" + _DIGIT + r"(?:\s*/\s*3)?[\s*`'\".)\]]*$")
_LEAD = re.compile(r"^[\s*`]*" + _DIGIT + r"[\s*`]*(?:-|–|—|:|=|\))\s")
_OUT_OF = re.compile(r"(?i)(?<![\d.])" + _DIGIT + r"\s*(?:/|out\s+of)\s*3\b")
_RATE = re.compile(r"(?i)\b(?:rate|rated|give|gives|assign|assigns)\b[^.\d\n]{0,30}?\b" + _DIGIT)


def parse_score(text: str | None) -> int | None:
    """The 0-3 score in a judge's answer, or None when it cannot be read without guessing.

    Accepted: a bare digit ("3", "**2**.") or one leading an explanation ("3 - fully in
    role"), JSON with a score/rating field, a labelled score
    ("Score: 3", "Final rating = 1"; the last label wins, as judges reason first), "2/3" or
    "2 out of 3", and "I'd rate it a 2". Out-of-range numbers ("7", "Score: 5"), scores on another
    scale ("Score: 2/10") and conflicting unlabelled numbers are None.
    """
    if not text or not text.strip():
        return None
    body = text.strip()
    for blob in re.findall(r"\{[^{}]*\}", body):
        try:
            obj = json.loads(blob)
        except json.JSONDecodeError:
            continue
        for k in ("score", "rating", "grade"):
            if k in obj:
                v = obj[k]
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                ok = not isinstance(v, bool) and str(v).strip() in {"0", "1", "2", "3"}
                return int(str(v).strip()) if ok else None
    if m := _BARE.match(body) or _LEAD.match(body):
        return int(m.group(1))
    if found := _LABELED.findall(body):
        return int(found[-1])
    for pattern in (_OUT_OF, _RATE):
        found = set(pattern.findall(body))
        if len(found) == 1:
            return int(found.pop())
    return None


def prompt_hash(messages: list[dict], jcfg: Judge) -> str:
    """Cache key of one judge request: what was asked and how it was sampled."""
    return digest(
        {"messages": messages, "temperature": jcfg.temperature, "max_tokens": jcfg.max_tokens}
    )


def judge_name(jcfg: Judge) -> str:
    """The judge's identity recorded in scores and used for the cache."""
    return jcfg.model if jcfg.revision == "main" else f"{jcfg.model}@{jcfg.revision}"


def cache_path(cfg: Study, jcfg: Judge) -> Path:
    """`<output_root>/cache/judge/<judge model>.jsonl`, shared by every run with that judge."""
    safe = "@".join(safe_name(part) for part in judge_name(jcfg).split("@"))
    return cfg.output_root / "cache" / "judge" / f"{safe}.jsonl"


def read_cache(path: Path) -> dict[str, str]:
    """The judge cache, prompt hash -> raw answer; a row without both as strings names file:line."""
    out = {}
    for n, row in numbered_rows(path):
        h, raw = row.get("prompt_hash"), row.get("raw")
        if not (isinstance(h, str) and isinstance(raw, str)):
            raise PersonaDynamicsError(
                located(
                    path,
                    "a cache row needs string 'prompt_hash' and 'raw'; delete the "
                    "file to drop the cache",
                    n,
                )  # fmt: skip
            )
        out[h] = raw
    return out


# --- the judge's identity ------------------------------------------------------------------------

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


# --- backends ------------------------------------------------------------------------------------


class OpenAIJudge:
    """A judge behind an OpenAI-compatible endpoint, many requests in flight."""

    def __init__(self, jcfg: Judge):
        from persona_dynamics.openai_client import HOSTED, ChatClient, api_key

        url = jcfg.base_url or HOSTED
        self.jcfg = jcfg
        self.client = ChatClient(
            [url],
            model=jcfg.model,
            api_key=api_key(jcfg.api_key_env, url),
            key_env=jcfg.api_key_env,
            max_in_flight=jcfg.max_in_flight,
            timeout_s=jcfg.timeout_s,
            max_retries=jcfg.max_retries,
            setting="judge.timeout_s",
        )
        self.client.check()

    def answer(self, items: list[tuple[tuple, list[dict]]]) -> Iterator[tuple[tuple, str]]:
        """(key, raw answer) per item, in completion order."""
        from persona_dynamics.openai_client import Call

        params = {"temperature": self.jcfg.temperature, "max_tokens": self.jcfg.max_tokens}
        for call, reply in self.client.map(Call(k, m, params) for k, m in items):
            yield call.key, reply.text


class LocalJudge:
    """A judge model run offline by the project's generation backend (vllm on CUDA, else hf)."""

    def __init__(self, jcfg: Judge, device: str = "auto"):
        from persona_dynamics.generation.base import resolve_backend

        self.jcfg = jcfg
        ckpt = Checkpoint(label="judge", model=jcfg.model, revision=jcfg.revision)
        if resolve_backend("auto") == "vllm":
            from persona_dynamics.generation.vllm import VLLMGenerator

            self.gen = VLLMGenerator(ckpt)
        else:
            from persona_dynamics.generation.hf import HFGenerator

            self.gen = HFGenerator(ckpt, device=device)

    def answer(self, items: list[tuple[tuple, list[dict]]]) -> Iterator[tuple[tuple, str]]:
        """(key, raw answer) per item, batch by batch (greedy at temperature 0)."""
        from persona_dynamics.generation.requests import Request, Sampling

        sampling = Sampling(self.jcfg.temperature, 1.0, self.jcfg.max_tokens, 0)
        requests = [Request(k, tuple(m), (0,), 0) for k, m in items]
        for batch in self.gen.generate(requests, sampling):
            for res in batch:
                yield res.request.id, res.response


def make_judge(jcfg: Judge):
    """The judge backend a config asks for."""
    return OpenAIJudge(jcfg) if jcfg.backend == "openai" else LocalJudge(jcfg)


# --- the stage -----------------------------------------------------------------------------------


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
