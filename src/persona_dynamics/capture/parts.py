"""Part files of a capture and their consolidation into one store per label.

A running capture writes each finished block of the batch plan as `<label>.parts/block-NNNNN.h5`
(atomically, rows sorted by key). Consolidation checks that the parts come from one run and one
plan, that no block is missing (a gap) and no key appears twice (an overlap), then streams them
into `<label>.h5` in key order, window by window, and removes the parts. One process consolidates
a label at a time (`lock.claim` on `<label>.parts/consolidate.lock`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.lock import claim, describe
from persona_dynamics.store import ActivationStore, StoreWriter

log = logging.getLogger(__name__)

# Attributes that must agree between a store, its parts and the run resuming it.
IDENTITY = (
    "model", "revision", "commit", "adapter", "layers", "aggregation", "backend", "dtype",
    "transcripts_digest", "tokens_digest", "span_rule", "hidden_size", "n_layers",
)  # fmt: skip
PART_ATTRS = ("block", "n_blocks", "plan_digest")
WINDOW_BYTES = 256 << 20  # consolidation buffer


def differences(have: dict, want: dict, keys=IDENTITY) -> list[str]:
    """Identity fields where a stored file disagrees with this run, as 'field: stored vs now'."""
    out = []
    for k in keys:
        a, b = have.get(k), want.get(k)
        a = list(a) if isinstance(a, list | tuple | np.ndarray) else a
        b = list(b) if isinstance(b, list | tuple | np.ndarray) else b
        if a != b:
            out.append(f"{k}: {a!r} vs {b!r}")
    return out


def parts_dir(final: Path) -> Path:
    """`<label>.parts/` beside `<label>.h5`."""
    return final.with_suffix(".parts")


def part_path(parts: Path, block: int) -> Path:
    """The part file of one block of the plan."""
    return parts / f"block-{block:05d}.h5"


def existing_parts(parts: Path, attrs: dict, plan_digest: str) -> dict[int, Path]:
    """Parts already written, checked to come from this very run (same identity, same plan)."""
    done: dict[int, Path] = {}
    for p in sorted(parts.glob("block-*.h5")):
        with ActivationStore.open(p) as st:
            diff = differences(st.attrs, attrs)
            if st.attrs.get("plan_digest") != plan_digest:
                diff.append("plan_digest (batch_tokens, block_samples or transcripts changed)")
            block = st.attrs.get("block")
        if diff:
            raise PersonaDynamicsError(
                f"{p}: part of a different capture ({'; '.join(diff)}); "
                f"delete {parts} or capture with the same settings"
            )
        done[int(block)] = p
    return done


def consolidate(parts: Path, final: Path) -> Path | None:
    """Merge all part files into `final`, rows sorted by key; refuse gaps and overlaps.

    Each part's rows are sorted by key, so any window of the final order takes a contiguous
    slice of each part: the merge streams window by window and never holds the whole store.
    """
    paths = sorted(parts.glob("block-*.h5"))
    if not paths:
        raise PersonaDynamicsError(f"{parts}: no part files to merge")
    with claim(parts / "consolidate.lock") as holder:
        if holder is not None:
            log.warning("%s: another process is consolidating (%s)", parts, describe(holder))
            return None
        stores = [ActivationStore.open(p) for p in paths]
        try:
            _check_parts(parts, paths, stores)
            _merge(stores, final)
        finally:
            for st in stores:
                st.close()
    shutil.rmtree(parts)
    log.info("%s: consolidated %d parts", final, len(paths))
    return final


def _check_parts(parts: Path, paths: list[Path], stores: list[ActivationStore]) -> None:
    first = stores[0].attrs
    for p, st in zip(paths, stores, strict=True):
        diff = differences(st.attrs, first, keys=(*IDENTITY, "n_blocks", "plan_digest"))
        if diff:
            raise PersonaDynamicsError(f"{p}: differs from {paths[0].name} ({'; '.join(diff)})")
    blocks = [int(st.attrs["block"]) for st in stores]
    missing = sorted(set(range(int(first["n_blocks"]))) - set(blocks))
    if missing:
        raise PersonaDynamicsError(
            f"{parts}: gap: block(s) {_short(missing)} of {first['n_blocks']} missing; "
            "run the shards that own them"
        )
    seen: dict = {}
    for p, st in zip(paths, stores, strict=True):
        keys = st.keys()
        for key in keys:
            if key in seen:
                raise PersonaDynamicsError(f"{p}: overlap: key {key} also in {seen[key].name}")
            seen[key] = p


def _short(xs: list[int]) -> str:
    return ", ".join(map(str, xs[:10])) + (f", ... ({len(xs)} in all)" if len(xs) > 10 else "")


def _merge(stores: list[ActivationStore], final: Path) -> None:
    keys = [k for keys in (st.keys() for st in stores) for k in keys]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    pos = np.empty(len(keys), np.int64)
    pos[order] = np.arange(len(keys))
    n_tokens = np.concatenate([st.n_tokens for st in stores])[order]
    bounds = np.cumsum([0] + [len(st) for st in stores])
    attrs = {k: v for k, v in stores[0].attrs.items() if k not in PART_ATTRS} | {"complete": True}
    shape = stores[0].f["acts"].shape[1:]
    with StoreWriter(final, [keys[i] for i in order], shape, attrs, n_tokens) as w:
        row_bytes = int(np.prod(shape)) * stores[0].f["acts"].dtype.itemsize
        window = max(1, WINDOW_BYTES // row_bytes // w.chunk_rows) * w.chunk_rows
        for w0 in range(0, len(keys), window):
            w1 = min(w0 + window, len(keys))
            buf = np.empty((w1 - w0, *shape), stores[0].f["acts"].dtype)
            for st, a0 in zip(stores, bounds[:-1], strict=True):
                p = pos[a0 : a0 + len(st)]
                a, b = np.searchsorted(p, [w0, w1])
                if a < b:
                    buf[p[a:b] - w0] = st.f["acts"][a:b]
            w.write(w0, buf)
        w.commit()
