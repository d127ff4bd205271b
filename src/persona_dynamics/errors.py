"""The one exception type for errors a user can cause; the CLI prints it in one line."""

from __future__ import annotations

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
