"""The transcript file contract every stage shares: layout, part files, reader, digest, manifest.

`<output_root>/transcripts/<run>/<model>/<revision or label>/<role>.jsonl`, one append-only JSONL
file per role; a shard I of N writes `<role>.shard-I-of-N.jsonl` beside it, and readers merge every
part of a role by key. The manifest records how the transcripts were sampled; a later run into the
same directory must sample the same way (same model, backend, sampling parameters, seed, template,
the same text of every role and question already sampled) or is refused, naming what differs.
`generate` writes these files; `judge`, `capture` and the adapters' own-text read them through
this module alone, taking exactly the config's selection of roles and questions (`selection`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from persona_dynamics import __version__
from persona_dynamics.config import WHOLE, Shard, Study, safe_name
from persona_dynamics.errors import PersonaDynamicsError, located
from persona_dynamics.files import write_json
from persona_dynamics.jsonl import KEY, check_key, existing_keys, key_of, numbered_rows
from persona_dynamics.models import is_local
from persona_dynamics.roles import (
    DEFAULT,
    Question,
    Role,
    digest,
    load_default,
    load_questions,
    load_roles,
    read_json,
    role_paths,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Manifest fields that must agree between runs writing into one directory.
FIXED = (
    "model",
    "revision",
    "backend",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "model_display_name",
    "chat_template_hash",
)
# Fields added later: compared only when the recorded manifest has them.
LATER = ("per_role_questions",)
# name -> digest maps that accumulate over runs (a role's prompts, a question's text): an entry
# already recorded must keep its digest, so an edited role or question file is refused.
DIGESTS = ("role_digests", "question_digests")


def transcripts_dir(cfg: Study) -> Path:
    """Where the generating checkpoint's transcripts of this run live."""
    ckpt = cfg.generating_checkpoint()
    if is_local(ckpt.model):
        model, rev = Path(ckpt.model).name, ckpt.label
    else:
        model, rev = safe_name(ckpt.model), safe_name(ckpt.revision)
    if ckpt.adapter or ckpt.intervention:  # own text never mixes with the plain weights'
        rev = ckpt.label
    return cfg.path("transcripts", model, rev)


def scores_path(cfg: Study) -> Path:
    """Where the judge's scores of `transcripts_dir(cfg)` live: `scores/<run>`, and for the text
    of an adapter or of a checkpoint under an intervention `scores/<run>/<label>`."""
    ckpt = cfg.generating_checkpoint()
    if ckpt.adapter or ckpt.intervention:
        return cfg.path("scores", ckpt.label)
    return cfg.path("scores")


def part_path(directory: Path, role: str, shard: Shard = WHOLE) -> Path:
    """The file a (role, shard) appends to."""
    if shard.count == 1:
        return directory / f"{role}.jsonl"
    return directory / f"{role}.shard-{shard.index}-of-{shard.count}.jsonl"


def role_parts(directory: Path) -> dict[str, list[Path]]:
    """Every role's files in a transcripts directory (the role is the name before the first dot)."""
    parts: dict[str, list[Path]] = {}
    for p in sorted(directory.glob("*.jsonl")):
        parts.setdefault(p.name.split(".", 1)[0], []).append(p)
    return parts


def written_keys(directory: Path, role: str) -> set[tuple]:
    """Keys of a role already written in any part (so a resumed or unsharded run skips them)."""
    out: set[tuple] = set()
    for p in role_parts(directory).get(role, []):
        out |= existing_keys(p)
    return out


def selection(cfg: Study) -> tuple[list[Role], dict[str, list[Question]]]:
    """The study's roles (the default Assistant last, when included) and each one's questions:
    what `generate` samples and every later stage reads, no more and no less."""
    include = cfg.roles.include
    names = [n for n in include if n != DEFAULT]
    roles = load_roles(cfg.roles.role_dir, names or None) if names or not include else []
    if cfg.roles.include_default or DEFAULT in include:
        roles.append(load_default(cfg.roles.default_file))
    shared = load_questions(cfg.roles.question_file, cfg.roles.question_count)
    questions = {}
    for r in roles:
        if cfg.roles.per_role_questions and not r.is_default:
            if not r.questions:
                raise PersonaDynamicsError(
                    f"{cfg.roles.role_dir}/{r.name}.json: roles.per_role_questions is set but "
                    "the role has no 'questions'"
                )
            own = r.questions[: cfg.roles.question_count]
            questions[r.name] = [Question(i, q) for i, q in enumerate(own)]
        else:
            questions[r.name] = shared
    return roles, questions


def read_selection(cfg: Study, directory: Path, questions: dict[str, list[Question]]) -> list[dict]:
    """The transcripts of the study's selection only (`selection`'s questions per role).

    Other roles' files in the directory and questions past roles.question_count are not read. A
    role that roles.include names must have transcripts, and a file of a role the roles directory
    does not know is an error; with every role selected (include empty), the roles present are
    read and those missing logged.
    """
    names = list(questions)
    present = role_parts(directory) if directory.is_dir() else {}
    known = {p.stem for p in role_paths(cfg.roles.role_dir)} | {DEFAULT}
    unknown = sorted(set(present) - known)
    if unknown:
        raise PersonaDynamicsError(
            f"{directory}: transcripts of unknown role(s) {', '.join(unknown[:5])} (not in "
            f"{cfg.roles.role_dir}); were they generated with another [roles] dir?"
        )
    if not cfg.roles.include:
        missing = [n for n in names if n not in present]
        if missing:
            log.info("%s: %d selected role(s) have no transcripts", directory, len(missing))
            names = [n for n in names if n in present]
    ids = {role: {q.id for q in questions[role]} for role in names}
    rows = read_transcripts(directory, names)
    return [r for r in rows if r["question_idx"] in ids[r["role"]]]


def read_transcripts(directory: str | Path, roles: list[str] | None = None) -> list[dict]:
    """Every row of every role (or of the named ones), role added, shards merged, sorted by key.

    A torn last line from a killed writer is dropped; a key written twice is an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PersonaDynamicsError(
            f"{directory}: no transcripts here; run `persona-dynamics generate` first"
        )
    parts = role_parts(directory)
    if roles is not None:
        missing = [r for r in roles if r not in parts]
        if missing:
            raise PersonaDynamicsError(
                f"{directory}: no transcripts for role(s) {', '.join(missing)} "
                f"(present: {', '.join(sorted(parts)) or 'none'})"
            )
        parts = {r: parts[r] for r in roles}
    out, seen = [], {}
    for role, paths in parts.items():
        for p in paths:
            for n, row in numbered_rows(p):
                key = (role, *check_row(p, n, row))
                if key in seen:
                    raise PersonaDynamicsError(f"{p}: key {key} also written in {seen[key]}")
                seen[key] = p
                out.append({"role": role, **row})
    out.sort(key=lambda r: (r["role"], *key_of(r, KEY)))
    return out


def check_row(path: Path, line: int, row: dict) -> tuple:
    """A transcript row's key, its fields checked against the contract; else an error naming
    file:line and the field."""
    key = check_key(path, line, row)

    def bad(what: str) -> PersonaDynamicsError:
        return PersonaDynamicsError(located(path, what, line))

    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad(f"'messages' must be a non-empty list, not {messages!r:.40}")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)):  # fmt: skip
            raise bad(f"'messages[{i}]' must be an object with string 'role' and 'content'")
    if not isinstance(row.get("response"), str):
        raise bad(f"'response' must be a string, not {row.get('response')!r:.40}")
    n_tokens = row.get("n_tokens", 0)
    if type(n_tokens) is not int or n_tokens < 0:
        raise bad(f"'n_tokens' must be a non-negative integer, not {n_tokens!r:.40}")
    return key


def transcripts_digest(rows: list[dict]) -> str:
    """Content hash over (key, messages, response), independent of row order."""
    items = [[r["role"], *key_of(r, KEY), r["messages"], r["response"]] for r in rows]
    return digest(sorted(items, key=lambda x: x[:4]))


def read_manifest(directory: Path) -> dict | None:
    """The manifest of a transcripts directory, or None when there is none yet."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    return read_json(path, obj=True)


def check_manifest(directory: Path, manifest: dict) -> None:
    """Refuse a run whose sampling differs from the one recorded in this directory.

    Only the FIXED fields present in `manifest` are compared, so a run can check the sampling
    parameters before loading its model and the chat template after.
    """
    old = read_manifest(directory)
    if old is None:
        return
    diff = [
        f"{k}: recorded {old.get(k)!r}, now {manifest[k]!r}"
        for k in (*FIXED, *(k for k in LATER if k in old))
        if k in manifest and old.get(k) != manifest[k]
    ]
    for field in DIGESTS:
        was, now = old.get(field) or {}, manifest.get(field) or {}
        changed = [k for k in now if k in was and was[k] != now[k]]
        if changed:
            diff.append(f"{field}: {', '.join(changed[:5])} changed since recorded")
    if diff:
        raise PersonaDynamicsError(
            f"{directory / MANIFEST}: this run samples differently from the transcripts already "
            f"there ({'; '.join(diff)}); use another --run-name or the recorded values"
        )


def write_manifest(directory: Path, manifest: dict) -> Path:
    """Record (atomically) how this directory's transcripts were sampled; roles accumulate."""
    old = read_manifest(directory) or {}
    roles = sorted(set(old.get("roles", [])) | set(manifest.get("roles", [])))
    maps = {f: {**(old.get(f) or {}), **manifest.get(f, {})} for f in DIGESTS}
    out = {
        **manifest,
        **{f: dict(sorted(m.items())) for f, m in maps.items()},
        "roles": roles,
        "package_version": __version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return write_json(directory / MANIFEST, out, indent=2, sort_keys=True)
