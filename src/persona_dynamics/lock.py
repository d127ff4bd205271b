"""One writer per output: a lock file, held while a stage writes a directory, naming its holder.

The lock is an advisory `flock` on `<dir>/<stage>.lock`, which the kernel drops when the holder
dies however it dies; the file records the holder (pid, host, start time, command) for the
message a second run gets. A lock file whose flock is free was left by a run that was killed:
it is stale, and the next run takes it over with a warning naming the dead holder. On a file
system without flock the recorded pid decides: a live pid on this host holds the lock.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from persona_dynamics.errors import PersonaDynamicsError, cannot_write

log = logging.getLogger(__name__)


def lock_file(directory: Path, stage: str, shard=None) -> Path:
    """`<dir>/<stage>.lock`; shards of one stage write side by side, so each has its own lock."""
    suffix = f"-{shard.index}of{shard.count}" if shard is not None and shard.count > 1 else ""
    return directory / f"{stage}{suffix}.lock"


@contextmanager
def hold(path: Path) -> Iterator[Path]:
    """Hold the lock for the block, or refuse at once naming the run that holds it."""
    with claim(path) as holder:
        if holder is not None:
            raise PersonaDynamicsError(
                f"{path}: another run is writing here ({describe(holder)}); wait for it to "
                "finish or stop it (the lock goes with its process)"
            )
        yield path


@contextmanager
def claim(path: Path) -> Iterator[dict | None]:
    """Take the lock for the block and yield None, or yield its live holder's record untaken.

    Directories made for the lock are removed with it when the stage left them empty (a refused
    run leaves no trace)."""
    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, held = _open(path)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    if held is not None:
        yield held
        return
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(me()) + "\n").encode())
    except OSError as exc:
        os.close(fd)
        raise cannot_write(path, exc) from None
    try:
        yield None
    finally:
        with suppress(OSError):  # removed while still held: a waiting run sees a new file
            path.unlink()
        os.close(fd)
        for d in made:
            with suppress(OSError):  # not empty: the stage wrote there
                d.rmdir()


def me() -> dict:
    """This process as a lock holder."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def describe(holder: dict) -> str:
    """'pid 12 on host h since T: command' for a message."""
    text = f"pid {holder.get('pid')} on host {holder.get('host')}"
    if holder.get("started"):
        text += f" since {holder['started']}"
    return text + (f": {holder['command']}" if holder.get("command") else "")


def _open(path: Path) -> tuple[int, dict | None]:
    """An fd holding the flock on `path` and None, or (-1, the holder's record) when held."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return -1, _holder(path)
        except OSError:  # no flock on this file system: the recorded pid decides
            holder = _record(fd)
            if holder and _alive(holder):
                os.close(fd)
                return -1, holder
            return _took(path, fd, holder)
        with suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return _took(path, fd, _record(fd))
        os.close(fd)  # the holder removed this file between our open and flock: take the new one


def _took(path: Path, fd: int, stale: dict | None) -> tuple[int, None]:
    if stale:
        log.warning(
            "%s: recovered a stale lock of a run that no longer holds it (%s)",
            path,
            describe(stale),
        )
    return fd, None


def _record(fd: int) -> dict | None:
    """The holder recorded in an open lock file (None when empty or unreadable)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        data = json.loads(os.read(fd, 1 << 16) or b"null")
    except ValueError:
        return {"pid": "?", "host": "?"}
    return data if isinstance(data, dict) else None


def _holder(path: Path) -> dict:
    """The record of a held lock; its holder may not have written it yet, so wait a moment."""
    for _ in range(20):
        with suppress(OSError, ValueError):
            data = json.loads(path.read_text() or "null")
            if isinstance(data, dict):
                return data
        time.sleep(0.05)
    return {"pid": "?", "host": "?"}


def _alive(holder: dict) -> bool:
    """Whether a recorded holder still runs (always assumed so on another host)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid")), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
