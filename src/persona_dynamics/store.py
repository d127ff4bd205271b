"""The HDF5 activation store: one file per checkpoint or adapter, read one layer at a time.

Layout (docs/contracts.md, "Activations"): dataset `acts` (n, layers, hidden) chunked as (rows, 1,
hidden) so one layer of many samples is one run of chunks; per-row key datasets `role` (codes into
the `roles` attr), `system_prompt_idx`, `question_idx`, `rollout_idx`, `n_tokens`; rows sorted by
key. Aggregation `none` keeps per-token activations instead: `tokens` (total, layers, hidden) and
`offsets` (n + 1,), sample i owning `tokens[offsets[i]:offsets[i + 1]]`.

Files are written whole, under a temporary name, then renamed: a reader never sees half a file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import suppress
from pathlib import Path

import numpy as np

from persona_dynamics.errors import PersonaDynamicsError, cannot_write, write_refused
from persona_dynamics.files import discard_h5, plain

log = logging.getLogger(__name__)

Key = tuple[str, int, int, int]
KEY_FIELDS = ("system_prompt_idx", "question_idx", "rollout_idx")
ATTRS = (
    "model", "revision", "commit", "adapter", "layers", "aggregation", "backend", "dtype",
    "transcripts_digest", "tokens_digest", "span_rule", "version", "complete", "hidden_size",
    "n_layers",
)  # fmt: skip
FLOAT16_MAX = float(np.finfo(np.float16).max)
CHUNK_BYTES = 1 << 20  # one chunk: ~1 MiB of one layer for consecutive samples


def activations_path(cfg, label: str) -> Path:
    """`<output_root>/activations/<run>/<label>.h5`, or `<capture.output_dir>/<label>.h5`."""
    root = cfg.capture.output_dir or cfg.path("activations")
    return Path(root) / f"{label}.h5"


def storage_dtype(name: str) -> np.dtype:
    """The numpy dtype of a store's `dtype` attr; only float16 and float32 are stores."""
    if name not in ("float16", "float32"):
        raise PersonaDynamicsError(f"store dtype must be float16 or float32, not '{name}'")
    return np.dtype(name)


def to_storage(acts: np.ndarray, dtype: str, where: str) -> np.ndarray:
    """Cast activations for storage; refuse values that float16 would silently turn into inf."""
    with np.errstate(over="ignore"):
        out = np.asarray(acts, dtype=storage_dtype(dtype))
    if out.dtype == np.float16 and np.isinf(out).any() and not np.isinf(acts).any():
        peak = float(np.nanmax(np.abs(np.asarray(acts, dtype=np.float32))))
        raise PersonaDynamicsError(
            f"{where}: activations reach {peak:.4g}, beyond float16's {FLOAT16_MAX:.0f}; "
            "store them as float32 (capture.dtype = 'float32')"
        )
    return out


def sort_order(keys: Sequence[Key]) -> np.ndarray:
    """Row order that sorts keys (role, system_prompt_idx, question_idx, rollout_idx)."""
    return np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)


def _chunk_rows(n: int, hidden: int, itemsize: int) -> int:
    return int(max(1, min(n, CHUNK_BYTES // (hidden * itemsize))))


class StoreWriter:
    """Streams one store into a temporary file; `commit()` renames it into place.

    Used whole by `write_store` and window by window by consolidation, so a store larger than
    memory is written without holding it.
    """

    def __init__(
        self,
        path: Path,
        keys: Sequence[Key],
        shape: tuple[int, int],
        attrs: dict,
        n_tokens: np.ndarray,
        *,
        chunked: bool = True,
        ragged_total: int | None = None,
    ):
        import h5py

        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.dtype = attrs.get("dtype", "float32")
        self.f = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = h5py.File(self.tmp, "w")
            self._layout(keys, shape, attrs, n_tokens, chunked, ragged_total)
        except OSError as exc:
            self.abort()
            raise cannot_write(self.path, exc) from None

    def _layout(self, keys, shape, attrs, n_tokens, chunked, ragged_total) -> None:
        """Create the datasets and attributes of the new store."""
        n_layers, hidden = shape
        dt = storage_dtype(self.dtype)
        rows = len(keys) if ragged_total is None else ragged_total
        name = "acts" if ragged_total is None else "tokens"
        chunks = (_chunk_rows(rows, hidden, dt.itemsize), 1, hidden) if chunked and rows else None
        self.data = self.f.create_dataset(name, (rows, n_layers, hidden), dtype=dt, chunks=chunks)
        self.chunk_rows = chunks[0] if chunks else max(rows, 1)
        roles = sorted({k[0] for k in keys})
        code = {r: i for i, r in enumerate(roles)}
        self.f.create_dataset("role", data=np.array([code[k[0]] for k in keys], dtype=np.int32))
        for j, field in enumerate(KEY_FIELDS, start=1):
            self.f.create_dataset(field, data=np.array([k[j] for k in keys], dtype=np.int64))
        self.f.create_dataset("n_tokens", data=np.asarray(n_tokens, dtype=np.int64))
        if ragged_total is not None:
            offsets = np.concatenate([[0], np.cumsum(n_tokens)]).astype(np.int64)
            self.f.create_dataset("offsets", data=offsets)
        self.f.attrs["roles"] = np.array(roles, dtype=object)
        for k, v in attrs.items():
            if v is not None:
                self.f.attrs[k] = v
        self.f.attrs.setdefault("complete", True)

    def write(self, start: int, acts: np.ndarray) -> None:
        """Write rows [start, start + len(acts)) (already in storage order)."""
        self.data[start : start + len(acts)] = to_storage(acts, self.dtype, str(self.path))

    def commit(self) -> Path:
        """Flush, fsync and rename the file into place."""
        self.f.flush()  # a refused write fails here, while the file can still be discarded
        self.f, f = None, self.f
        f.close()
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary file (after an error)."""
        if self.f is not None:
            discard_h5(self.f)
        with suppress(OSError):
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        if exc is not None and write_refused(exc):  # disk full, read-only, over the size limit
            raise cannot_write(self.path, exc) from None


def write_store(
    path: Path,
    acts: np.ndarray | list[np.ndarray],
    keys: list[Key],
    layers: list[int],
    attrs: dict,
    n_tokens: np.ndarray | None = None,
    *,
    chunked: bool = True,
) -> Path:
    """Write a whole store atomically, rows sorted by key.

    `acts` is (n, layers, hidden), or for aggregation 'none' a list of (n_i, layers, hidden)
    arrays, one per sample. `n_tokens` defaults to 1 per row (or n_i for ragged input).
    """
    ragged = isinstance(acts, list)
    if len(acts) != len(keys):
        raise PersonaDynamicsError(f"{path}: {len(acts)} activation rows for {len(keys)} keys")
    if len(set(keys)) != len(keys):
        raise PersonaDynamicsError(f"{path}: duplicate keys")
    order = sort_order(keys)
    keys = [keys[i] for i in order]
    if ragged:
        acts = [acts[i] for i in order]
        lens = np.array([len(a) for a in acts], dtype=np.int64)
        n_tokens = lens if n_tokens is None else np.asarray(n_tokens)[order]
        shape = acts[0].shape[1:] if acts else (len(layers), 0)
    else:
        acts = np.asarray(acts)[order]
        n_tokens = np.ones(len(keys), np.int64) if n_tokens is None else np.asarray(n_tokens)[order]
        shape = acts.shape[1:] if acts.ndim == 3 else (len(layers), 0)
    if shape[0] != len(layers):
        raise PersonaDynamicsError(f"{path}: activations have {shape[0]} layers, not {len(layers)}")
    attrs = {**attrs, "layers": np.asarray(layers, dtype=np.int64)}
    total = int(sum(len(a) for a in acts)) if ragged else None
    with StoreWriter(
        path, keys, tuple(shape), attrs, n_tokens, chunked=chunked, ragged_total=total
    ) as w:
        if ragged and total:
            w.write(0, np.concatenate(acts))
        elif not ragged and len(acts):
            w.write(0, acts)
        return w.commit()


class ActivationStore:
    """Read-only view of one activation file; loads keys up front and activations on demand."""

    def __init__(self, path: Path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise PersonaDynamicsError(f"{self.path}: activation store not found")
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as exc:
            raise PersonaDynamicsError(f"{self.path}: not a readable HDF5 store ({exc})") from None
        try:
            self._load()
        except PersonaDynamicsError:
            self.f.close()
            raise
        except (OSError, KeyError) as exc:  # a damaged file that h5py opened but cannot read
            self.f.close()
            raise PersonaDynamicsError(f"{self.path}: not a readable HDF5 store ({exc})") from None

    def _load(self) -> None:
        """Read the attributes and key datasets, checking them against the contract."""
        raw = dict(self.f.attrs)
        for name in ("roles", "layers"):
            if name not in raw:
                raise PersonaDynamicsError(f"{self.path}: not an activation store: attribute "
                                           f"'{name}' missing")  # fmt: skip
        self.attrs = {k: None for k in ATTRS} | {k: plain(v) for k, v in raw.items()}
        self.attrs.pop("roles", None)
        self.roles: list[str] = [plain(r) for r in raw["roles"]]
        self.layers: list[int] = [int(x) for x in self.attrs["layers"]]
        self.ragged = "tokens" in self.f
        data = self._dataset("tokens" if self.ragged else "acts")
        self.role_codes = self._column("role")
        self.system_prompt_idx = self._column("system_prompt_idx")
        self.question_idx = self._column("question_idx")
        self.rollout_idx = self._column("rollout_idx")
        self.n_tokens = self._column("n_tokens")
        self.offsets = self._dataset("offsets")[:] if self.ragged else None
        n = len(self.role_codes)
        if len(self.role_codes) and not 0 <= self.role_codes.min() <= self.role_codes.max() < len(
            self.roles
        ):
            raise PersonaDynamicsError(
                f"{self.path}: dataset 'role' holds codes outside the {len(self.roles)} roles"
            )
        if data.ndim != 3 or data.shape[1] != len(self.layers):
            raise PersonaDynamicsError(
                f"{self.path}: dataset '{data.name.lstrip('/')}' has shape {data.shape}, not "
                f"(rows, {len(self.layers)} layers, hidden)"
            )
        if not self.ragged and data.shape[0] != n:
            raise PersonaDynamicsError(
                f"{self.path}: dataset 'acts' has {data.shape[0]} rows for {n} keys"
            )

    def _dataset(self, name: str):
        if name not in self.f:
            raise PersonaDynamicsError(f"{self.path}: not an activation store: dataset '{name}' "
                                       "missing")  # fmt: skip
        return self.f[name]

    def _column(self, name: str) -> np.ndarray:
        """A per-row key dataset, one integer per row, as long as the `role` column."""
        col = self._dataset(name)[:]
        if col.ndim != 1 or not np.issubdtype(col.dtype, np.integer):
            raise PersonaDynamicsError(f"{self.path}: dataset '{name}' is not one integer per row")
        if name != "role" and len(col) != len(self.role_codes):
            raise PersonaDynamicsError(
                f"{self.path}: dataset '{name}' has {len(col)} rows, 'role' {len(self.role_codes)}"
            )
        return col

    def key(self, row: int) -> str:
        """A row's key in words, for messages: role, prompt, question, rollout."""
        return (
            f"role '{self.roles[self.role_codes[row]]}', prompt {int(self.system_prompt_idx[row])}"
            f", question {int(self.question_idx[row])}, rollout {int(self.rollout_idx[row])}"
        )

    @classmethod
    def open(cls, path: Path) -> ActivationStore:
        """Open a store for reading (also usable as a context manager)."""
        return cls(path)

    def __len__(self) -> int:
        return len(self.role_codes)

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self.f.close()

    def keys(self) -> list[Key]:
        """(role, system_prompt_idx, question_idx, rollout_idx) of every row, in row order."""
        return [
            (self.roles[c], int(s), int(q), int(r))
            for c, s, q, r in zip(
                self.role_codes, self.system_prompt_idx, self.question_idx, self.rollout_idx,
                strict=True,
            )
        ]  # fmt: skip

    def _slot(self, layer: int) -> int:
        if layer not in self.layers:
            raise PersonaDynamicsError(
                f"{self.path}: layer {layer} was not captured (captured: {self.layers})"
            )
        if self.ragged:
            raise PersonaDynamicsError(
                f"{self.path}: holds per-token activations (aggregation 'none'); use .tokens(row)"
            )
        return self.layers.index(layer)

    def layer(self, layer: int, rows=None) -> np.ndarray:
        """(n_rows, hidden) float32 activations of one layer, for all rows or the given ones."""
        j = self._slot(layer)
        acts = self.f["acts"]
        if rows is None:
            return acts[:, j, :].astype(np.float32)
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        uniq, back = np.unique(rows, return_inverse=True)
        if len(uniq) == 0:
            return np.zeros((0, acts.shape[2]), np.float32)
        return acts[uniq, j, :].astype(np.float32)[back]

    def iter_layer(self, layer: int, chunk: int = 4096) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield (row slice, (rows, hidden) float32) blocks of one layer, in row order."""
        j = self._slot(layer)
        acts = self.f["acts"]
        for i in range(0, len(self), chunk):
            s = slice(i, min(i + chunk, len(self)))
            try:
                block = acts[s, j, :]
            except OSError as exc:  # a damaged chunk (a file cut short or overwritten)
                raise PersonaDynamicsError(
                    f"{self.path}: rows {s.start}-{s.stop - 1} of layer {layer} are unreadable "
                    f"({exc}); capture this label again"
                ) from None
            yield s, block.astype(np.float32)

    def tokens(self, row: int, layer: int | None = None) -> np.ndarray:
        """Per-token activations of one sample (aggregation 'none'): (n, layers) or one layer."""
        if not self.ragged:
            raise PersonaDynamicsError(f"{self.path}: holds aggregated activations, not tokens")
        a, b = int(self.offsets[row]), int(self.offsets[row + 1])
        if layer is None:
            return self.f["tokens"][a:b].astype(np.float32)
        if layer not in self.layers:
            raise PersonaDynamicsError(
                f"{self.path}: layer {layer} was not captured (captured: {self.layers})"
            )
        return self.f["tokens"][a:b, self.layers.index(layer)].astype(np.float32)
