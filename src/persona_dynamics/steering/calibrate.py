"""The `calibrate` stage: per-token projections on the steering vector, as percentiles per layer.

It reads the run's transcripts of the study's selection (the default Assistant's and the roles')
under the steering checkpoint, projects each response token's block output on the unit vector,
and writes the quantiles and each layer's mean residual norm to calibration.json, which caps
(τ = a percentile) and norm-unit coefficients resolve against.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from persona_dynamics import __version__
from persona_dynamics.chat import encode
from persona_dynamics.config import Study
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.files import write_json
from persona_dynamics.hooks import block_spans
from persona_dynamics.lock import hold, lock_file
from persona_dynamics.models import load_config, load_model, load_tokenizer, resolve_commit
from persona_dynamics.roles import DEFAULT
from persona_dynamics.steering.calibration import GROUPS, quantiles, vector_digest
from persona_dynamics.steering.spec import calibration_path, setting_layers, study_vector
from persona_dynamics.transcripts import (
    read_selection,
    selection,
    transcripts_digest,
    transcripts_dir,
)

log = logging.getLogger(__name__)


def calibration_layers(cfg: Study, n_layers: int) -> list[int]:
    """Every layer a setting (or steering.layers) acts on."""
    s = cfg.steering
    found = set(setting_layers(s, None, n_layers))
    for st in s.settings:
        found |= set(setting_layers(s, st, n_layers))
    return sorted(found)


def run_calibrate(cfg: Study) -> Path:
    """Measure the projections' percentiles and the mean norms; write calibration.json."""
    with hold(lock_file(cfg.path("steering"), "calibrate")):
        return _run_calibrate(cfg)


def _run_calibrate(cfg: Study) -> Path:
    """run_calibrate's work, under the run lock."""
    s = cfg.steering
    ckpt = cfg.checkpoint(s.checkpoint or cfg.reference_label)
    directions = study_vector(cfg, s.vector)
    n_layers = load_config(ckpt.model, ckpt.revision).num_hidden_layers
    layers = calibration_layers(cfg, n_layers)
    missing = [layer for layer in layers if layer not in directions]
    if missing:
        raise PersonaDynamicsError(
            f"steering.vector '{s.vector}' has no direction at layer(s) {missing} "
            f"(has {sorted(directions)}); analyze those layers or choose others"
        )
    source = transcripts_dir(cfg)
    rows = read_selection(cfg, source, selection(cfg)[1])
    if not rows:
        raise PersonaDynamicsError(f"{source}: no transcripts to calibrate on; run generate first")
    rng = np.random.default_rng(s.seed)
    if len(rows) > s.calibration_samples:
        keep = sorted(rng.choice(len(rows), s.calibration_samples, replace=False))
        rows = [rows[i] for i in keep]
    gen = cfg.generating_checkpoint()
    tok = load_tokenizer(gen.model, gen.revision)
    commit = resolve_commit(ckpt.model, ckpt.revision)
    loaded = load_model(ckpt, cfg.capture.device, cfg.capture.model_dtype, commit=commit)
    model = loaded.model
    device = next(model.parameters()).device
    units = {i: torch.as_tensor(directions[i]).float().to(device) for i in layers}
    units = {i: u / u.norm() for i, u in units.items()}
    proj = {g: {i: [] for i in layers} for g in GROUPS[1:]}
    norms = {i: [] for i in layers}
    for row in tqdm(rows, desc="calibrate", unit="transcript", mininterval=2):
        enc = encode(tok, row["messages"], row["response"])
        if enc.n_response == 0:
            continue
        spans = block_spans(model, enc.input_ids, enc.start, enc.end, layers)
        group = "default" if row["role"] == DEFAULT else "roles"
        for i in layers:
            h = spans[i]
            proj[group][i].append((h @ units[i]).cpu().numpy())
            norms[i].append(h.norm(dim=-1).cpu().numpy())
    per_layer = {}
    for i in layers:
        by = {g: np.concatenate(proj[g][i]) if proj[g][i] else np.zeros(0) for g in proj}
        by["all"] = np.concatenate([by["default"], by["roles"]])
        per_layer[str(i)] = {
            "mean_norm": float(np.concatenate(norms[i]).mean()),
            "n_tokens": {g: int(v.size) for g, v in by.items()},
            "quantiles": {g: quantiles(by[g]) for g in GROUPS},
        }
    path = calibration_path(cfg)
    write_json(path, {
        "label": ckpt.label, "model": ckpt.model, "revision": ckpt.revision,
        "commit": loaded.commit, "adapter": ckpt.adapter, "vector": s.vector,
        "vector_digest": vector_digest(directions), "transcripts_digest": transcripts_digest(rows),
        "n_transcripts": len(rows), "grid_step": 0.1, "layers": per_layer, "version": __version__,
    })  # fmt: skip
    log.info("calibrated %d layer(s) on %d transcripts: %s", len(layers), len(rows), path)
    return path
