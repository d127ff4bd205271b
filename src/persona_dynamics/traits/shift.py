"""Finetuning shift: how far each adapter (and each checkpoint from its predecessor) moved along
each trait vector and the axis, against what its training data predicted (persona_vectors).

Measured: the mean over the study's shared questions (no system prompt) of the last prompt
token's block output under the label minus under its base, projected on the unit direction.
Predicted (adapters): the mean projection of the training responses under the base, minus that of
the base's own default-Assistant answers in the run, both response means by the span rule.
Writes `traits/<run>/shift.csv` (`label, base, direction, layer, predicted, measured`) and
`shift.json` (Pearson r of predicted with measured over the adapters' rows).
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np

from persona_dynamics import __version__
from persona_dynamics.adapters.data import load_data
from persona_dynamics.chat import encode
from persona_dynamics.config import Study
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.files import write_json, write_table
from persona_dynamics.generation.requests import encode_prompt, messages_for
from persona_dynamics.hooks import block_spans
from persona_dynamics.layers import middle
from persona_dynamics.lock import hold, lock_file
from persona_dynamics.models import load_config, load_model, load_tokenizer
from persona_dynamics.readers import stage_labels
from persona_dynamics.roles import DEFAULT, load_questions
from persona_dynamics.spacefile import read_directions
from persona_dynamics.transcripts import read_transcripts, transcripts_dir
from persona_dynamics.vectors import read_trait


def pairs(cfg: Study) -> list[tuple[str, str]]:
    """(label, base): each adapter with its base, each plain checkpoint with its predecessor."""
    out = []
    for c in cfg.checkpoints:
        if c.adapter:
            where = (c.model, c.revision)
            same = [b.label for b in cfg.checkpoints
                    if not b.adapter and (b.model, b.revision) == where]  # fmt: skip
            if not same:
                raise PersonaDynamicsError(f"adapter '{c.label}' has no base checkpoint")
            out.append((c.label, same[0]))
    plain = [x for x in stage_labels(cfg) if not cfg.checkpoint(x).adapter]
    return out + list(zip(plain[1:], plain[:-1], strict=True))


def directions(cfg: Study, layer: int) -> dict[str, np.ndarray]:
    """The unit axis and every trait vector of the run at `layer`."""
    out = {"axis": read_directions(cfg.path("analysis", "space.h5"), "axis")}
    traits = cfg.path("traits", "vectors.h5")
    if traits.is_file():
        import h5py

        with h5py.File(traits, "r") as h5:
            names = list(h5)
        out |= {f"trait:{n}": read_trait(traits, n) for n in names}
    units = {}
    for name, dirs in out.items():
        if layer not in dirs:
            raise PersonaDynamicsError(f"{name} has no layer {layer} (has {sorted(dirs)})")
        units[name] = dirs[layer] / np.linalg.norm(dirs[layer])
    return units


def spans(tok, conversations: list[tuple[list[dict], str]]) -> list[tuple[list[int], int, int]]:
    """(ids, start, end) of each (messages, response) by the span rule; empty responses left out."""
    out = []
    for messages, response in conversations:
        e = encode(tok, messages, response)
        if e.n_response:
            out.append((e.input_ids, e.start, e.end))
    return out


def block_means(model, items: list[tuple[list[int], int, int]], layer: int) -> np.ndarray:
    """(items, hidden): block `layer`'s output averaged over tokens [start, end) of each item."""
    spans = [block_spans(model, ids, start, end, [layer])[layer] for ids, start, end in items]
    return np.stack([h.mean(0).cpu().numpy() for h in spans])


def training_of(cfg: Study, label: str):
    """The [[adapters.training]] entry that made an adapter checkpoint, or None."""
    ckpt = cfg.checkpoint(label)
    for t in getattr(cfg.adapters, "training", []):
        if ckpt.adapter and Path(ckpt.adapter).name == t.name:
            return t
    return None


def run_shift(cfg: Study) -> Path:
    """Measured and predicted shifts per (label, direction); returns shift.csv."""
    with hold(lock_file(cfg.path("traits"), "shift")):
        return _run_shift(cfg)


def _run_shift(cfg: Study) -> Path:
    """run_shift's work, under the run lock."""
    ref = cfg.checkpoint(cfg.reference_label)
    n_layers = load_config(ref.model, ref.revision).num_hidden_layers
    layer = cfg.analysis.lead_layer if cfg.analysis.lead_layer is not None else middle(n_layers)
    units = directions(cfg, layer)
    tok = load_tokenizer(ref.model, ref.revision)
    qs = load_questions(cfg.roles.question_file, cfg.traits.question_count or 20)
    prompts = []
    for q in qs:
        ids = encode_prompt(tok, messages_for("", q.question))
        prompts.append((ids, len(ids) - 1, len(ids)))  # the last prompt token
    own = spans(tok, [(r["messages"], r["response"])
                      for r in read_transcripts(transcripts_dir(cfg), [DEFAULT])])  # fmt: skip
    todo = pairs(cfg)
    last, predicted = {}, {}
    for label in dict.fromkeys(x for pair in todo for x in pair):  # each model loaded once
        model = load_model(cfg.checkpoint(label), cfg.capture.device, cfg.capture.model_dtype).model
        last[label] = block_means(model, prompts, layer)
        for adapter, base in todo:
            t = training_of(cfg, adapter)
            if base == label and t is not None:  # the prediction needs only the base
                data = load_data(t.data, t.holdout, t.seed)
                train = spans(tok, [(list(x.prompt), x.completion) for x in data.examples])
                gap = block_means(model, train, layer).mean(0) - block_means(
                    model, own, layer
                ).mean(0)
                predicted[adapter] = {name: float(gap @ u) for name, u in units.items()}
        del model
        gc.collect()
    rows = []
    for label, base in todo:
        delta = (last[label] - last[base]).mean(0)
        for name, u in units.items():
            guess = predicted.get(label, {}).get(name, float("nan"))
            rows.append({"label": label, "base": base, "direction": name, "layer": layer,
                         "predicted": guess, "measured": float(delta @ u)})  # fmt: skip
    out = cfg.path("traits", "shift.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(out, rows)
    scored = [r for r in rows if np.isfinite(r["predicted"])]
    xs, ys = [r["predicted"] for r in scored], [r["measured"] for r in scored]
    r = float(np.corrcoef(xs, ys)[0, 1]) if len(scored) > 2 else float("nan")
    meta = {"layer": layer, "pearson_r": r, "n": len(scored), "directions": sorted(units)}
    write_json(out.with_suffix(".json"), meta | {"version": __version__})
    return out
