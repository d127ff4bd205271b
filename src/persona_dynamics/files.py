"""The one way small result files are written: whole, under a temporary name, then renamed.

A reader (or a killed writer's next run) never sees half a text, JSON or CSV file, and a write
that fails (disk full, read-only, over the file-size limit) leaves no temporary behind and raises
one error naming the file (small HDF5 files too: `write_h5`). JSON values
are made plain first (numpy scalars and arrays unwrapped, NaN and inf as null), and `plain` turns
an HDF5 attribute back into a plain Python value for every reader of the suite's HDF5 files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path

import numpy as np

from persona_dynamics.errors import cannot_write, write_refused


def atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` on a temporary name beside `path`, then rename it into place.

    On any failure the temporary is removed; an OS error becomes one error naming `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        if not write_refused(exc):
            raise
        raise cannot_write(path, exc) from None
    finally:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically: a temporary name beside it, then rename."""
    return atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_h5(path: str | Path, fill: Callable) -> Path:
    """Write a small HDF5 file atomically: `fill(h5)` builds it in memory, then it is written
    whole, so a write the OS refuses never reaches HDF5 (which copes badly with one)."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        fill(h5)
    return atomic(path, lambda tmp: tmp.write_bytes(buf.getbuffer()))


def discard_h5(f) -> None:
    """Close an HDF5 file whose writes failed without crashing: HDF5 retries the failed writes on
    every close (h5py segfaults on the second), so they are sent to /dev/null first."""
    if not f.id.valid:
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, f.id.get_vfd_handle())
    finally:
        os.close(null)
    f.close()


def jsonable(obj):
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN and inf as null."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, data: dict, *, indent: int = 1, sort_keys: bool = False) -> Path:
    """Write JSON atomically (values made plain), one trailing newline."""
    text = json.dumps(jsonable(data), indent=indent, sort_keys=sort_keys) + "\n"
    return write_text(path, text)


def write_table(path: str | Path, rows: Iterable[dict], parquet: bool = True) -> Path:
    """Write rows as CSV atomically, and as parquet beside it when pyarrow is importable."""
    path = Path(path)
    rows = [jsonable(r) for r in rows]
    fields = list(dict.fromkeys(k for r in rows for k in r))

    def csv_(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

    atomic(path, csv_)
    if not parquet:
        return path
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # optional: the CSV is the contract, parquet a convenience
        return path
    table = pa.Table.from_pylist(rows)
    atomic(path.with_suffix(".parquet"), lambda tmp: pq.write_table(table, tmp))
    return path


def plain(value):
    """An HDF5 attribute value as plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [plain(x) for x in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value
