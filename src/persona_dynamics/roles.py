"""Role instruction files and the shared question set: load, validate, digest.

The schema is that of the published Assistant Axis role set (docs/contracts.md, "Roles"), so a user
can point the suite at that set or at their own directory in the same shape. The suite's own set
ships inside the package (`shipped_dir`, `shipped_questions`), so an installed wheel finds it from
any working directory.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from persona_dynamics.errors import PersonaDynamicsError, located

DEFAULT = "default"
NAME = re.compile(r"[a-z0-9_]+")
SHIPPED_MIN_ROLES = 275  # the paper's scale, which the shipped set promises
SHIPPED_VARIANTS = 5  # system-prompt variants per role, in the shipped and the published set


def shipped_dir() -> Path:
    """The shipped role files (package data), wherever the package is installed."""
    return Path(resources.files("persona_dynamics") / "data" / "roles" / "instructions")


def shipped_questions() -> Path:
    """The shipped 240 shared questions (package data)."""
    return Path(resources.files("persona_dynamics") / "data" / "roles" / "questions.jsonl")


def upstream_default() -> Path:
    """Upstream assistant-axis's five default-Assistant prompts (package data), the preset's."""
    return Path(
        resources.files("persona_dynamics") / "data" / "roles" / "upstream" / "default.json"
    )


@dataclass(frozen=True)
class Role:
    """One role: its system-prompt variants, the judge's rubric and optional own questions."""

    name: str
    instructions: tuple[str, ...]
    eval_prompt: str | None = None
    questions: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT


@dataclass(frozen=True)
class Question:
    id: int
    question: str
    category: str | None = None


def read_text(path: Path, what: str = "") -> str:
    """A UTF-8 text file; a missing file or bytes that are not UTF-8 name file:line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PersonaDynamicsError(f"{path}: {what + ' ' if what else ''}file not found") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PersonaDynamicsError(located(path, "not UTF-8 text", line)) from None


def read_json(path: Path, obj: bool = False) -> object:
    """Parse a JSON file (with `obj`, one holding an object); errors name file:line:column."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PersonaDynamicsError(
            located(path, f"invalid JSON: {exc.msg}", exc.lineno, exc.colno)
        ) from None
    if obj and not isinstance(data, dict):
        raise PersonaDynamicsError(located(path, "top level must be a JSON object"))
    return data


def read_jsonl(path: Path, what: str) -> list[tuple[int, object]]:
    """(line number, parsed value) of every non-blank line; errors name file:line:column."""
    lines = read_text(path, what).splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise PersonaDynamicsError(
                located(path, f"invalid JSON: {exc.msg}", n, exc.colno)
            ) from None
    return rows


def load_role(path: str | Path, name: str | None = None) -> Role:
    """Load and check one `<role>.json` (its name the stem, unless given); every problem names the
    file and field."""
    path = Path(path)
    name = name or path.stem
    if not NAME.fullmatch(name):
        raise PersonaDynamicsError(located(path, "role names (file stems) must match [a-z0-9_]+"))
    data = read_json(path, obj=True)
    unknown = sorted(set(data) - {"instruction", "eval_prompt", "questions"})
    if unknown:
        raise PersonaDynamicsError(located(path, f"unknown field(s): {', '.join(unknown)}"))
    inst = data.get("instruction")
    if not isinstance(inst, list) or not inst:
        raise PersonaDynamicsError(located(path, "field 'instruction' must be a non-empty list"))
    texts = []
    for i, item in enumerate(inst):
        if not isinstance(item, dict) or not isinstance(item.get("pos"), str):
            raise PersonaDynamicsError(
                located(path, f"field 'instruction[{i}]' must be an object with a string 'pos'")
            )
        texts.append(item["pos"])
    eval_prompt = data.get("eval_prompt")
    if eval_prompt is not None and not isinstance(eval_prompt, str):
        raise PersonaDynamicsError(located(path, "field 'eval_prompt' must be a string"))
    questions = data.get("questions", [])
    if not isinstance(questions, list) or not all(isinstance(q, str) for q in questions):
        raise PersonaDynamicsError(located(path, "field 'questions' must be a list of strings"))
    if name != DEFAULT:
        if not eval_prompt or not eval_prompt.strip():
            raise PersonaDynamicsError(located(path, "field 'eval_prompt' is missing or empty"))
        for i, t in enumerate(texts):
            if not t.strip():
                raise PersonaDynamicsError(located(path, f"field 'instruction[{i}].pos' is empty"))
    return Role(name, tuple(texts), eval_prompt, tuple(questions))


def role_paths(directory: str | Path) -> list[Path]:
    """The role files of a directory, sorted by name, without `default.json`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PersonaDynamicsError(f"{directory}: roles directory not found")
    return sorted(p for p in directory.glob("*.json") if p.stem != DEFAULT)


def load_roles(directory: str | Path, include: list[str] | None = None) -> list[Role]:
    """Load every role of a directory (or the named ones, in the order given)."""
    directory = Path(directory)
    paths = role_paths(directory)
    if include:
        by_name = {p.stem: p for p in paths}
        missing = [n for n in include if n not in by_name]
        if missing:
            some = ", ".join(sorted(by_name)[:5])
            raise PersonaDynamicsError(
                f"{directory}: unknown role(s): {', '.join(missing)} (known: {len(by_name)} "
                f"roles, e.g. {some or 'none'}; see `persona-dynamics roles list --dir "
                f"{directory}`)"
            )
        paths = [by_name[n] for n in include]
    if not paths:
        raise PersonaDynamicsError(f"{directory}: no role files (*.json) found")
    return [load_role(p) for p in paths]


def load_default(where: str | Path) -> Role:
    """The default Assistant's prompts: a roles directory's `default.json` (the empty prompt among
    them), or the file named."""
    path = Path(where)
    return load_role(path / f"{DEFAULT}.json" if path.is_dir() else path, DEFAULT)


def load_questions(path: str | Path, count: int | None = None) -> list[Question]:
    """Read the shared questions JSONL (`id`, `question`, optional `category`)."""
    path = Path(path)
    out: list[Question] = []
    for n, row in read_jsonl(path, "questions"):
        if not isinstance(row, dict):
            raise PersonaDynamicsError(located(path, "each line must be a JSON object", n))
        q, qid, cat = row.get("question"), row.get("id", len(out)), row.get("category")
        if not isinstance(q, str) or not q.strip():
            raise PersonaDynamicsError(
                located(path, "field 'question' must be a non-empty string", n)
            )
        if not isinstance(qid, int) or isinstance(qid, bool):
            raise PersonaDynamicsError(located(path, "field 'id' must be an integer", n))
        if cat is not None and not isinstance(cat, str):
            raise PersonaDynamicsError(located(path, "field 'category' must be a string", n))
        out.append(Question(qid, q, cat))
    if not out:
        raise PersonaDynamicsError(f"{path}: the question set is empty")
    ids = [q.id for q in out]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise PersonaDynamicsError(located(path, f"duplicate question id(s): {dup[:10]}"))
    return out[:count] if count else out


def digest(obj: object) -> str:
    """A short stable content hash of JSON-serialisable data (sha256, 16 hex digits)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def roles_digest(roles: list[Role]) -> str:
    return digest([[r.name, r.instructions, r.eval_prompt, r.questions] for r in roles])


def questions_digest(questions: list[Question]) -> str:
    return digest([[q.id, q.question] for q in questions])


# --- validation of a whole directory -------------------------------------------------------------


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def near_duplicates(
    texts: list[tuple[str, str]], threshold: float = 0.8
) -> list[tuple[str, str, float]]:
    """Pairs of (owner, text) from different owners whose word-3-gram Jaccard >= threshold.

    An inverted index on shingles keeps this to candidate pairs, not all n^2 comparisons.
    """
    sh = [_shingles(t) for _, t in texts]
    index: dict[tuple[str, ...], list[int]] = {}
    for i, s in enumerate(sh):
        for g in s:
            index.setdefault(g, []).append(i)
    seen: set[tuple[int, int]] = set()
    found = []
    for i, s in enumerate(sh):
        cands = {j for g in s for j in index[g] if j > i}
        for j in cands:
            if texts[i][0] == texts[j][0] or (i, j) in seen:
                continue
            seen.add((i, j))
            jac = len(s & sh[j]) / len(s | sh[j])
            if jac >= threshold:
                found.append((texts[i][0], texts[j][0], round(jac, 3)))
    return found


@dataclass
class Report:
    """What `roles validate` found: counts, problems (the set is unusable) and policy warnings."""

    n_roles: int = 0
    n_questions: int = 0
    n_default_prompts: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def validate(
    directory: str | Path,
    questions: str | Path | None = None,
    min_roles: int = 1,
    variants: int | None = None,
    strict: bool = True,
) -> Report:
    """Check a roles directory (and a questions file) against the schema; collect every finding.

    Schema problems (unreadable or malformed files, bad names, empty prompts, texts repeated
    exactly, a default set without the empty prompt, bad questions) are `problems` for any set.
    The policy checks are problems only when `strict` (the shipped set) and `warnings` otherwise:
    at least `min_roles` roles (275 for the shipped set), exactly `variants` instruction variants
    per role (5) and no near-duplicate texts across roles; the published Assistant Axis set has
    near-duplicates (word-3-gram Jaccard 0.80-0.81) and is used unchanged.
    """
    directory = Path(directory)
    rep = Report()
    policy = rep.problems if strict else rep.warnings
    roles: list[Role] = []
    paths = role_paths(directory)
    rep.n_roles = len(paths)
    if not paths:
        rep.problems.append(f"{directory}: no role files (*.json) found")
    for p in paths:
        try:
            roles.append(load_role(p))
        except PersonaDynamicsError as exc:
            rep.problems.append(str(exc))
    if paths and rep.n_roles < min_roles:
        policy.append(f"{directory}: {rep.n_roles} roles, expected at least {min_roles}")
    for r in roles:
        path = directory / f"{r.name}.json"
        if variants is not None and len(r.instructions) != variants:
            policy.append(
                located(path, f"{len(r.instructions)} instruction variants, expected {variants}")
            )
        norm = [" ".join(t.lower().split()) for t in r.instructions]
        if len(set(norm)) != len(norm):
            rep.problems.append(located(path, "duplicate instruction variants"))
    pairs = [(r.name, t) for r in roles for t in r.instructions]
    pairs += [(r.name, r.eval_prompt or "") for r in roles]
    exact: dict[str, str] = {}
    for owner, text in pairs:
        key = " ".join(text.lower().split())
        if key in exact and exact[key] != owner:
            rep.problems.append(f"{directory}: roles '{exact[key]}' and '{owner}' share a text")
        exact.setdefault(key, owner)
    for a, b, jac in near_duplicates(pairs):
        policy.append(f"{directory}: roles '{a}' and '{b}' have near-duplicate texts ({jac})")
    default_path = directory / f"{DEFAULT}.json"
    if default_path.exists():
        try:
            d = load_default(directory)
            rep.n_default_prompts = len(d.instructions)
            if "" not in d.instructions:
                rep.problems.append(located(default_path, "the empty system prompt is missing"))
        except PersonaDynamicsError as exc:
            rep.problems.append(str(exc))
    else:
        rep.problems.append(f"{default_path}: the default Assistant's prompts are missing")
    if questions is not None:
        try:
            qs = load_questions(questions)
            rep.n_questions = len(qs)
            texts = [" ".join(q.question.lower().split()) for q in qs]
            if len(set(texts)) != len(texts):
                rep.problems.append(f"{questions}: duplicate questions")
        except PersonaDynamicsError as exc:
            rep.problems.append(str(exc))
    return rep
