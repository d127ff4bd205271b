"""The dose-response of a steering grid: read each setting's judged transcripts, measure the
capability under each setting, write `steering/<run>/dose_response.csv`.

`pipeline.run_steer` generates and judges every setting first (the unsteered baseline too); this
stage only reads those files (`steering.spec.steered_study` names them) and the model.
"""

from __future__ import annotations

import logging
from pathlib import Path

from persona_dynamics import __version__
from persona_dynamics.config import Study
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.files import write_json, write_table
from persona_dynamics.lock import hold, lock_file
from persona_dynamics.models import load_config, load_model, load_tokenizer, resolve_commit
from persona_dynamics.roles import DEFAULT
from persona_dynamics.scores import load_scores
from persona_dynamics.steering.capability import encoded, passages, perplexity
from persona_dynamics.steering.dose import COLUMNS, key, role_rows
from persona_dynamics.steering.spec import intervention, setting, steered_study
from persona_dynamics.transcripts import read_transcripts, scores_path, transcripts_dir

log = logging.getLogger(__name__)


def describe(cfg: Study, name: str | None, n_layers: int) -> dict:
    """The setting columns of its rows (the baseline is 'none')."""
    if name is None:
        return {"setting": "none", "vector": "", "layers": "", "mode": "none",
                "coefficient": 0.0, "percentile": None}  # fmt: skip
    st, iv = setting(cfg, name), intervention(cfg, name, n_layers)
    return {
        "setting": name, "vector": st.vector or cfg.steering.vector,
        "layers": " ".join(map(str, iv.layers)), "mode": st.mode,
        "coefficient": st.coefficient if st.mode == "add" else None,
        "percentile": st.percentile,
    }  # fmt: skip


def run_dose(cfg: Study) -> Path:
    """Write dose_response.csv (COLUMNS) and dose_response.json (how it was made)."""
    with hold(lock_file(cfg.path("steering"), "steer")):
        return _run_dose(cfg)


def _run_dose(cfg: Study) -> Path:
    """run_dose's work, under the run lock."""
    s = cfg.steering
    if not s.settings:
        raise PersonaDynamicsError("no [[steering.settings]] to measure")
    ckpt = cfg.checkpoint(s.checkpoint or cfg.reference_label)
    names = [None, *(x.name for x in s.settings)]
    studies = {name: steered_study(cfg, name) for name in names}
    rows = {name: read_transcripts(transcripts_dir(sub)) for name, sub in studies.items()}
    for name, found in rows.items():
        if not found:
            raise PersonaDynamicsError(
                f"{transcripts_dir(studies[name])}: no transcripts of setting "
                f"'{name or 'none'}'; run `persona-dynamics steer` (it generates them)"
            )
    scores = {}
    for name, sub in studies.items():
        path = scores_path(sub)
        scores[name] = load_scores(path) if path.is_dir() else {}
    gen = cfg.generating_checkpoint()
    tok = load_tokenizer(gen.model, gen.revision)
    n_layers = load_config(ckpt.model, ckpt.revision).num_hidden_layers
    commit = resolve_commit(ckpt.model, ckpt.revision)
    model = load_model(ckpt, cfg.capture.device, cfg.capture.model_dtype, commit=commit).model
    text = [] if s.capability_text is None else passages(s.capability_text)
    own = [] if text else [r for r in rows[None] if r["role"] == DEFAULT]
    if not text and not own:  # e.g. the jailbreak prompts: the study's own default text
        own = read_transcripts(transcripts_dir(cfg), [DEFAULT])
    if not text and not own:
        raise PersonaDynamicsError(
            "no default-Assistant text to measure capability on; set steering.capability_text"
        )
    items = encoded(tok, own, text)

    def ids(found: list[dict]) -> dict[tuple, list[int]]:
        return {key(r): tok(r["response"], add_special_tokens=False)["input_ids"] for r in found}

    baseline = ids(rows[None])
    table = []
    for name in names:
        edit = None if name is None else intervention(cfg, name, n_layers)
        ppl = perplexity(model, items, edit)
        log.info("setting %s: perplexity %.3f", name or "none", ppl)
        table += role_rows(
            describe(cfg, name, n_layers), rows[name], scores[name], ids(rows[name]), baseline,
            ppl, s.bootstrap, s.seed,
        )  # fmt: skip
    out = cfg.path("steering", "dose_response.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(out, [{c: r[c] for c in COLUMNS} for r in table])
    write_json(out.with_suffix(".json"), {
        "label": ckpt.label, "model": ckpt.model, "revision": ckpt.revision, "commit": commit,
        "adapter": ckpt.adapter, "judge": cfg.judge and cfg.judge.model,
        "capability": str(s.capability_text) if text else "default-Assistant text",
        "prompts": s.prompts,
        "settings": {n: describe(cfg, n, n_layers) for n in names if n},
        "bootstrap": s.bootstrap, "seed": s.seed, "version": __version__,
    })  # fmt: skip
    return out
