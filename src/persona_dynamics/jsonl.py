"""Append-only keyed JSONL files that survive kill -9: the one writer and reader for transcripts,
scores and caches.

A writer appends whole lines and flushes and fsyncs once per batch, so a process killed at any
moment leaves every earlier line complete and at most one torn last line (no trailing newline).
Readers drop that torn line; the next writer cuts it off before appending. Rows are identified by
a key, a tuple of named fields; a re-run skips the keys already present. A write the OS refuses
(disk full, over the file-size limit) is one error naming the file; what it wrote of the batch
ends at most in a torn line, which the next run cuts off.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from persona_dynamics.errors import PersonaDynamicsError, cannot_write, located

log = logging.getLogger(__name__)

KEY = ("system_prompt_idx", "question_idx", "rollout_idx")


def key_of(row: dict, fields: Sequence[str] = KEY) -> tuple:
    """The key of a row: the values of `fields`, in order."""
    return tuple(row[f] for f in fields)


def complete_length(path: Path, chunk: int = 1 << 16) -> int:
    """Byte length of the file up to and including its last newline (its complete lines)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        end = size
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            block = f.read(end - start)
            i = block.rfind(b"\n")
            if i >= 0:
                return start + i + 1
            end = start
    return 0


def numbered_rows(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, row) of every complete row of a JSONL file; a torn last line (from a kill)
    is dropped.

    A missing file reads as no rows. A line that is complete but not UTF-8 text or not a JSON
    object is corruption, not a kill, and an error naming file:line.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        log.warning(
            "%s: dropping a torn last line (%d bytes) left by an interrupted writer",
            path,
            len(data) - cut,
        )
    rows = []
    for n, raw in enumerate(data[:cut].split(b"\n")[:-1], 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PersonaDynamicsError(
                located(path, f"corrupt line: not UTF-8 text (byte {exc.start + 1})", n)
            ) from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PersonaDynamicsError(located(path, f"corrupt line: {exc.msg}", n)) from None
        if not isinstance(row, dict):
            raise PersonaDynamicsError(located(path, "corrupt line: not a JSON object", n))
        rows.append((n, row))
    return rows


def read_rows(path: str | Path) -> list[dict]:
    """Every complete row of a JSONL file (`numbered_rows` without the line numbers)."""
    return [row for _, row in numbered_rows(path)]


def check_key(path: Path, line: int, row: dict, fields: Sequence[str] = KEY) -> tuple:
    """A row's key, each field a non-negative integer; else an error naming file:line and field."""
    for f in fields:
        if f not in row:
            raise PersonaDynamicsError(located(path, f"missing key field '{f}'", line))
        v = row[f]
        if type(v) is not int or v < 0:
            raise PersonaDynamicsError(
                located(path, f"'{f}' must be a non-negative integer, not {v!r}", line)
            )
    return key_of(row, fields)


def existing_keys(path: str | Path, fields: Sequence[str] = KEY) -> set[tuple]:
    """The keys already written to a JSONL file (none when it does not exist), each checked."""
    path = Path(path)
    return {check_key(path, n, row, fields) for n, row in numbered_rows(path)}


class Appender:
    """Append rows to one JSONL file: cut a torn tail first, then write and fsync every batch."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                keep = complete_length(self.path)
                if keep < self.path.stat().st_size:
                    log.warning("%s: cutting a torn last line before appending", self.path)
                    os.truncate(self.path, keep)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise cannot_write(self.path, exc) from None

    def write(self, rows: Iterable[dict]) -> int:
        """Append rows as one batch, durable on return; returns how many were written."""
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
        data = memoryview("".join(lines).encode("utf-8"))
        try:
            while data:  # unbuffered: nothing is left to flush later, out of order
                data = data[os.write(self._fd, data) :]
            if lines:
                os.fsync(self._fd)
        except OSError as exc:
            raise cannot_write(self.path, exc) from None
        return len(lines)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> Appender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
