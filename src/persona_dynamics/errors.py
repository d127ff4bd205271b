"""The one exception type for errors a user can cause; the CLI prints it in one line."""

from __future__ import annotations

import errno as codes
import os
import re
from pathlib import Path


class PersonaDynamicsError(Exception):
    """A user-facing error: bad input, a missing file, a refused run. Names the culprit."""


def located(path: str | Path, message: str, line: int | None = None, col: int | None = None) -> str:
    """Format `file[:line[:col]]: message`, the shape every input error takes."""
    where = str(path)
    if line is not None:
        where += f":{line}"
        if col is not None:
            where += f":{col}"
    return f"{where}: {message}"


def require(extra: str, module: str):
    """Import an optional dependency or fail naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PersonaDynamicsError(
            f"this needs the optional package '{module}': pip install 'persona-dynamics[{extra}]'"
        ) from exc


class Interrupted(PersonaDynamicsError):
    """Ctrl-C during a stage: the message says what was kept (the CLI adds how to resume)."""


def write_refused(exc: BaseException) -> bool:
    """Whether the OS refused a write: an OSError, or h5py's RuntimeError carrying an errno."""
    return isinstance(exc, OSError) or (isinstance(exc, RuntimeError) and "errno = " in str(exc))


def cannot_write(path: str | Path, exc: Exception) -> PersonaDynamicsError:
    """An OS error writing `path` (disk full, read-only, over the file-size limit) in one line."""
    found = re.search(r"errno = (\d+)", str(exc))  # h5py folds the C library's errno in
    code = int(found.group(1)) if found else getattr(exc, "errno", None)
    reason = os.strerror(code) if code else str(exc).splitlines()[0]
    if code in (codes.ENOSPC, codes.EDQUOT):
        reason += "; free space and re-run: finished work is kept"
    return PersonaDynamicsError(f"{path}: cannot write: {reason}")
