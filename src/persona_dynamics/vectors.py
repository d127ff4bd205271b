"""Directions from anywhere, keyed by our layer index: space.h5, traits, GGUF, upstream .pt.

Our layer i is decoder block i's output (docs/definitions.md). llama.cpp adds a control vector's
`direction.i` after block i too, but never at block 0 (its index 0 is reserved), so a block-0
direction cannot be exported. persona_vectors and transformers' `output_hidden_states` count the
embeddings as 0: their index i is our i - 1 (`from_hidden_states_index`). Upstream assistant-axis
saves an axis as one (n_layers, hidden) tensor indexed by block, and capping settings as a dict of
named per-layer vectors and experiments (`layers_46:54-p0.25`) of ceilings on them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from persona_dynamics.errors import PersonaDynamicsError, require
from persona_dynamics.interventions import Intervention

Directions = dict[int, np.ndarray]
GGUF_ARCH = "controlvector"


def from_hidden_states_index(directions: Directions) -> Directions:
    """Re-key directions indexed like `output_hidden_states` (0 = embeddings) by block output."""
    if 0 in directions:
        raise PersonaDynamicsError(
            "a direction at hidden-states index 0 is on the embeddings, before any block"
        )
    return {i - 1: v for i, v in directions.items()}


def write_gguf(path: Path, directions: Directions, model_hint: str) -> Path:
    """Write llama.cpp's control-vector GGUF (`direction.<i>` float32 per block i ≥ 1)."""
    gguf = require("vectors", "gguf")
    if 0 in directions:
        raise PersonaDynamicsError(
            f"{path}: llama.cpp control vectors cannot act on block 0 (its index 0 is reserved); "
            "leave layer 0 out"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, GGUF_ARCH)
    writer.add_string(f"{GGUF_ARCH}.model_hint", model_hint)
    writer.add_int32(f"{GGUF_ARCH}.layer_count", len(directions))
    for layer in sorted(directions):
        writer.add_tensor(f"direction.{layer}", np.asarray(directions[layer], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path


def read_gguf(path: Path) -> tuple[Directions, str]:
    """(directions by block, model hint) from a llama.cpp control-vector GGUF."""
    gguf = require("vectors", "gguf")
    if not Path(path).is_file():
        raise PersonaDynamicsError(f"{path}: no such control-vector file")
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise PersonaDynamicsError(f"{path}: not a readable GGUF file ({exc})") from None
    arch = _string(reader, "general.architecture")
    if arch != GGUF_ARCH:
        raise PersonaDynamicsError(f"{path}: a GGUF '{arch}' file, not a control vector")
    out = {}
    for t in reader.tensors:
        head, _, index = t.name.partition(".")
        if head != "direction" or not index.isdigit():
            raise PersonaDynamicsError(f"{path}: unexpected tensor '{t.name}' in a control vector")
        out[int(index)] = np.asarray(t.data, dtype=np.float32).reshape(-1).copy()
    if not out:
        raise PersonaDynamicsError(f"{path}: a control vector with no directions")
    return out, _string(reader, f"{GGUF_ARCH}.model_hint") or ""


def _string(reader, key: str) -> str | None:
    field = reader.get_field(key)
    return None if field is None else bytes(field.parts[-1]).decode("utf-8")


def _load_pt(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types; one message
        raise PersonaDynamicsError(
            f"{path}: not a tensor file torch can load safely ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def read_upstream_axis(path: Path) -> Directions:
    """An upstream assistant-axis `.pt` axis: one (n_layers, hidden) tensor, row i = block i."""
    data = _load_pt(path)
    if not hasattr(data, "ndim") or data.ndim != 2:
        raise PersonaDynamicsError(
            f"{path}: expected one (n_layers, hidden) tensor, got {type(data).__name__}"
            + (f" of shape {tuple(data.shape)}" if hasattr(data, "shape") else "")
        )
    return {i: row.float().numpy() for i, row in enumerate(data)}


def read_upstream_capping(path: Path, experiment: str) -> list[Intervention]:
    """An upstream capping config's experiment as ceiling caps (one intervention per vector)."""
    import torch

    data = _load_pt(path)
    if not isinstance(data, dict) or not {"vectors", "experiments"} <= set(data):
        raise PersonaDynamicsError(f"{path}: not a capping config (keys 'vectors', 'experiments')")
    ids = [e.get("id") for e in data["experiments"]]
    found = [e for e in data["experiments"] if e.get("id") == experiment]
    if not found:
        raise PersonaDynamicsError(
            f"{path}: no experiment '{experiment}' (has: {', '.join(map(str, ids[:8]))}"
            + (", ..." if len(ids) > 8 else "")
            + ")"
        )
    out = []
    for item in found[0]["interventions"]:
        vec = data["vectors"].get(item["vector"])
        if vec is None:
            raise PersonaDynamicsError(
                f"{path}: experiment '{experiment}' names vector '{item['vector']}', "
                "which the file does not hold"
            )
        layer = int(vec["layer"])
        out.append(
            Intervention(
                "cap",
                {layer: torch.as_tensor(vec["vector"]).float()},
                values={layer: float(item["cap"])},
                direction="ceiling",
                name=f"{experiment}:{item['vector']}",
            )
        )
    return out


def read_trait(path: Path, name: str) -> Directions:
    """One trait's vector per layer from a run's traits/<run>/vectors.h5."""
    import h5py

    if not Path(path).is_file():
        raise PersonaDynamicsError(f"{path}: no trait vectors; run `persona-dynamics traits`")
    with h5py.File(path, "r") as h5:
        if name not in h5:
            raise PersonaDynamicsError(f"{path}: no trait '{name}' (has: {', '.join(h5)})")
        vecs = h5[name]["vectors"][:]
        return {int(i): vecs[s] for s, i in enumerate(h5.attrs["layers"])}
