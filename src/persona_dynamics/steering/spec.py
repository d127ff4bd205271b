"""A study's steering settings as interventions: the vector, the layers, τ from the calibration.

`study_vector` finds the direction a config names (the run's space.h5 axis or a PC, a llama.cpp
GGUF control vector, an upstream .pt axis); `intervention` turns one `[[steering.settings]]`
entry into an `Intervention` for a model of `n_layers` blocks. Generation, capture and the
steer stage all build their edits here, so one setting means one edit everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from persona_dynamics.config import NO_SETTING, Steering, SteeringSetting, Study, parse
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.interventions import Intervention
from persona_dynamics.layers import resolve
from persona_dynamics.spacefile import read_directions
from persona_dynamics.steering.calibration import Calibration, read_calibration, vector_digest
from persona_dynamics.vectors import read_gguf, read_trait, read_upstream_axis


def study_vector(cfg: Study, spec: str) -> dict[int, np.ndarray]:
    """The direction per layer that `spec` names: axis / pc<k> of the run's space, trait:<name>
    of the run's trait vectors, or a .gguf / .pt file."""
    if spec.endswith(".gguf"):
        return read_gguf(Path(spec))[0]
    if spec.endswith(".pt"):
        return read_upstream_axis(Path(spec))
    if spec.startswith("trait:"):
        return read_trait(cfg.path("traits", "vectors.h5"), spec.removeprefix("trait:"))
    space = cfg.path("analysis", "space.h5")
    if not space.exists():
        raise PersonaDynamicsError(
            f"{space}: steering.vector '{spec}' is read from the run's persona space; run "
            "`persona-dynamics analyze` first (or name a .gguf or .pt file)"
        )
    return read_directions(space, spec)


def setting_layers(s: Steering, setting: SteeringSetting | None, n_layers: int) -> list[int]:
    """The blocks a setting acts on (its own layers, else steering.layers)."""
    spec = s.layers if setting is None or setting.layers is None else setting.layers
    return resolve(spec, n_layers, "steering.layers")


def calibration_path(cfg: Study) -> Path:
    """Where `calibrate` writes the steering checkpoint's calibration."""
    return cfg.path("steering", "calibration.json")


def load_calibration(cfg: Study, directions: dict[int, np.ndarray]) -> Calibration:
    """The run's calibration, checked against the steering checkpoint and vector."""
    label = cfg.steering.checkpoint or cfg.reference_label
    return read_calibration(calibration_path(cfg), label, vector_digest(directions))


def setting(cfg: Study, name: str) -> SteeringSetting:
    """The `[[steering.settings]]` entry called `name`."""
    for s in cfg.steering.settings:
        if s.name == name:
            return s
    known = ", ".join(s.name for s in cfg.steering.settings) or "none"
    raise PersonaDynamicsError(f"no steering setting '{name}' (known: {known})")


def intervention(cfg: Study, name: str, n_layers: int) -> Intervention:
    """Setting `name` as an intervention on an `n_layers`-block model."""
    st = setting(cfg, name)
    directions = study_vector(cfg, st.vector or cfg.steering.vector)
    layers = setting_layers(cfg.steering, st, n_layers)
    missing = [layer for layer in layers if layer not in directions]
    if missing:
        raise PersonaDynamicsError(
            f"steering setting '{name}': the vector has no direction at layer(s) {missing} "
            f"(has {sorted(directions)})"
        )
    vectors = {layer: torch.as_tensor(directions[layer]).float() for layer in layers}
    needs = (st.unit == "norm" and st.mode == "add") or st.percentile is not None
    cal = load_calibration(cfg, directions) if needs else None
    values = None
    if st.mode in ("cap", "mean_ablate"):
        values = {
            layer: st.value if st.value is not None else cal.value(layer, st.percentile)
            for layer in layers
        }
    norms = {layer: cal.norm(layer) for layer in layers} if cal and st.mode == "add" else None
    return Intervention(
        st.mode,
        vectors,
        coefficient=st.coefficient,
        unit=st.unit if st.mode == "add" else "raw",
        norms=norms,
        values=values,
        direction=st.direction,
        scope=st.scope,
        name=name,
    )


def jailbreaks_dir() -> Path:
    """The shipped persona-jailbreak set: role-play framings, harmful requests, a harm rubric."""
    from importlib.resources import files

    return Path(str(files("persona_dynamics") / "data" / "jailbreaks"))


def steered_study(cfg: Study, name: str | None) -> Study:
    """The study whose generating checkpoint is the steering checkpoint under setting `name`
    (None: the unsteered baseline, a zero addition labelled `<label>+none`, so its text never
    mixes with the study's), over steering.roles, question_count, prompts and temperature
    when given."""
    base = cfg.checkpoint(cfg.steering.checkpoint or cfg.reference_label)
    data = cfg.model_dump(mode="json", exclude_none=True)
    if name is None:
        name = NO_SETTING
        none = {"name": NO_SETTING, "mode": "add", "coefficient": 0.0, "unit": "raw"}
        data["steering"]["settings"] = [*data["steering"]["settings"], none]
    else:
        setting(cfg, name)
    label = f"{base.label}+{name}"
    ckpt = base.model_dump(mode="json", exclude_none=True) | {"label": label, "intervention": name}
    data["checkpoints"] = [c for c in data["checkpoints"] if c["label"] != label] + [ckpt]
    data["reference"] = cfg.reference_label
    data["generation"]["checkpoint"] = label
    s = cfg.steering
    if s.prompts == "jailbreaks":
        data["roles"] |= {"dir": str(jailbreaks_dir()), "include": [], "per_role_questions": True,
                          "include_default": "default" in s.roles}  # fmt: skip
    elif s.roles:
        data["roles"]["include"] = list(s.roles)
    if s.question_count is not None:
        data["roles"]["question_count"] = s.question_count
    if s.temperature is not None:
        data["generation"]["temperature"] = s.temperature
    return parse(data, f"steering setting {name}")
