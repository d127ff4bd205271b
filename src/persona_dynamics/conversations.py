"""Multi-turn conversations for the drift stage: scripted user turns, or whole transcripts.

Scripted sets ship per domain in `data/drift/<domain>.json` ({"domain", "conversations": [{"name",
"turns": [user message, ...]}]}); the checkpoint under study writes the assistant side. A
transcript in upstream assistant-axis' format (`{"conversation": [{"role", "content"}, ...],
"domain", "system_prompt"?}`, e.g. `transcripts/persona_drift/*.json`) keeps its assistant side
as is, or has it regenerated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from persona_dynamics.errors import PersonaDynamicsError


@dataclass(frozen=True)
class Conversation:
    """User turns in order, the assistant's replies when given, an optional system prompt."""

    name: str
    domain: str
    turns: tuple[str, ...]
    replies: tuple[str, ...] | None = None
    system: str | None = None


def shipped_dir() -> Path:
    """The scripted sets that ship with the package (coding, writing, therapy, philosophy)."""
    return Path(str(files("persona_dynamics") / "data" / "drift"))


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersonaDynamicsError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise PersonaDynamicsError(f"{path}: expected a JSON object")
    return data


def load_script(path: Path) -> list[Conversation]:
    """A scripted set: every conversation's user turns, its domain from the file."""
    data = _read(path)
    domain, convs = data.get("domain"), data.get("conversations")
    if not isinstance(domain, str) or not isinstance(convs, list) or not convs:
        raise PersonaDynamicsError(f"{path}: needs 'domain' (text) and 'conversations' (a list)")
    out = []
    for i, c in enumerate(convs):
        turns = c.get("turns") if isinstance(c, dict) else None
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise PersonaDynamicsError(f"{path}: conversations[{i}].turns must be a list of text")
        out.append(Conversation(str(c.get("name") or f"{domain}-{i}"), domain, tuple(turns)))
    return out


def load_transcript(path: Path) -> Conversation:
    """An upstream-format transcript: alternating user and assistant messages."""
    data = _read(path)
    msgs = data.get("conversation")
    if not isinstance(msgs, list) or not msgs:
        raise PersonaDynamicsError(f"{path}: needs 'conversation', a list of messages")
    system = data.get("system_prompt") or None
    if msgs[0].get("role") == "system":
        system, msgs = msgs[0].get("content"), msgs[1:]
    users = [m.get("content") for m in msgs[0::2]]
    replies = [m.get("content") for m in msgs[1::2]]
    roles = [m.get("role") for m in msgs]
    if roles != ["user", "assistant"] * (len(msgs) // 2) + ["user"] * (len(msgs) % 2):
        raise PersonaDynamicsError(f"{path}: messages must alternate user, assistant")
    replies = replies[: len(users)]
    if not all(isinstance(x, str) for x in users + replies):
        raise PersonaDynamicsError(f"{path}: every message needs text 'content'")
    return Conversation(
        path.stem, str(data.get("domain") or "unknown"), tuple(users[: len(replies)] or users),
        tuple(replies) or None, system,
    )  # fmt: skip


def load_conversations(scripts: list[Path], transcripts: list[Path]) -> list[Conversation]:
    """Scripted sets (default: the shipped ones when nothing is named) and transcripts."""
    if not scripts and not transcripts:
        scripts = sorted(shipped_dir().glob("*.json"))
    out = [c for p in scripts for c in load_script(Path(p))]
    out += [load_transcript(Path(p)) for p in transcripts]
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PersonaDynamicsError(f"drift: conversation names appear twice: {', '.join(dup)}")
    return out
