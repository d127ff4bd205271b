"""Placing adapters in the reference persona space, on planted activations with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from persona_dynamics.adapters.place import (
    OWN_TEXT,
    REFERENCE_TEXT,
    base_of,
    measure,
    nearest_share,
    own_text_config,
    own_text_store,
    run_place,
)
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.space import PersonaSpace
from persona_dynamics.store import activations_path, write_store

from helpers.study import make_study

D, QUESTIONS, ROLES = 16, 12, ["r0", "r1", "r2", "r3", "r4", "r5"]
ATTRS = {"transcripts_digest": "t", "tokens_digest": "k", "complete": True, "n_layers": 2}


def config(root, **analysis):
    """The instruct reference and one adapter on it, placed with a short bootstrap."""
    return make_study(
        root,
        run_name="p",
        reference="instruct",
        checkpoints=[
            {"label": "instruct", "model": "org/m"},
            {"label": "ada", "model": "org/m", "adapter": str(root / "ada")},
        ],
        analysis={"bootstrap": 40, "seed": 1, **analysis},
    )


def means(seed=0):
    """Role means, and a default vector well off the roles' center."""
    rng = np.random.default_rng(seed)
    roles = {r: rng.normal(size=D) * 3 for r in ROLES}
    center = np.mean(list(roles.values()), axis=0)
    return roles, center + 6 * rng.normal(size=D) / np.sqrt(D)


def store(path, rows, rng, noise=0.05):
    """rows: (role, prompt, question, mean vector); two layers, layer 1 = 2 x layer 0."""
    keys = [(r, p, q, 0) for r, p, q, _ in rows]
    x = np.stack([m + noise * rng.normal(size=D) for *_, m in rows])
    write_store(path, np.stack([x, 2 * x], axis=1), keys, [0, 1], ATTRS)
    return {k: x[i] for i, k in enumerate(keys)}


@pytest.fixture
def planted(tmp_path):
    cfg = config(tmp_path)
    roles, default = means()
    rng = np.random.default_rng(1)
    grid = [(r, 0, q) for r in ROLES for q in range(QUESTIONS)]
    grid += [("default", p, q) for p in range(2) for q in range(QUESTIONS)]
    ref = [(r, p, q, roles.get(r, default)) for r, p, q in grid]
    moved = [(r, p, q, roles["r2"] if r == "default" else m) for r, p, q, m in ref]
    own = [("default", p, q, roles["r4"]) for p in range(5) for q in range(QUESTIONS)]
    acts = {
        "instruct": store(activations_path(cfg, "instruct"), ref, rng),
        REFERENCE_TEXT: store(activations_path(cfg, "ada"), moved, rng),
        OWN_TEXT: store(own_text_store(cfg, "ada"), own, rng),
    }
    return cfg, acts


def default_of(acts):
    return np.mean([v for k, v in acts.items() if k[0] == "default"], axis=0)


def test_place_finds_the_planted_neighbours_and_shift(planted):
    cfg, acts = planted
    report = json.loads(run_place(cfg).read_text())
    assert report["lead_layer"] == 1 and report["scored"] is False
    ada = report["adapters"]["ada"]
    assert ada["base"] == "instruct"
    ref_text, own_text = ada["texts"][REFERENCE_TEXT], ada["texts"][OWN_TEXT]
    assert ref_text["nearest"][0]["role"] == "r2" and own_text["nearest"][0]["role"] == "r4"
    assert ref_text["nearest_share"] == 1.0 and own_text["nearest_share"] == 1.0
    assert ref_text["nearest"][0]["cos"] > 0.99 and [n["rank"] for n in own_text["nearest"]] == [
        1, 2, 3, 4, 5
    ]  # fmt: skip

    # oracle at the lead layer (layer 1 = 2 x layer 0): fit the space on the stored means
    ref = acts["instruct"]
    vec = np.stack([np.mean([v for k, v in ref.items() if k[0] == r], axis=0) for r in ROLES])
    space = PersonaSpace(cfg.analysis.n_components).fit(
        2 * vec, 2 * default_of(ref), np.ones(len(ROLES), bool)
    )
    for text in (REFERENCE_TEXT, OWN_TEXT):
        mine = 2 * default_of(acts[text])
        got = ada["texts"][text]
        want = space.project_axis(mine) - space.project_axis(2 * default_of(ref))
        assert got["axis_shift"]["value"] == pytest.approx(want, rel=1e-4)
        assert got["axis_shift"]["lo"] <= got["axis_shift"]["value"] <= got["axis_shift"]["hi"]
        coords = space.transform(mine[None])[0]
        for j in range(3):
            assert got[f"pc{j + 1}"]["value"] == pytest.approx(coords[j], rel=1e-4, abs=1e-6)
    # moving the default onto a role moves it down the axis, toward the roles
    assert ref_text["axis_shift"]["hi"] < 0 and own_text["axis_shift"]["hi"] < 0

    out = cfg.path("analysis")
    rows = (out / "adapters.csv").read_text().splitlines()
    assert rows[0] == "label,base,text,layer,statistic,value,lo,hi"
    assert len(rows) == 1 + 2 * 2 * (3 + 3 + 1)  # layers x texts x (axis stats, pcs, share)
    near = (out / "adapters_nearest.csv").read_text().splitlines()
    assert len(near) == 1 + 2 * 2 * 5


def test_measure_cosine_is_in_persona_coordinates():
    rng = np.random.default_rng(0)
    roles = rng.normal(size=(5, 8))
    space = PersonaSpace(3).fit(roles, roles.mean(0) + rng.normal(size=8), np.ones(5, bool))
    got = measure(space, roles, roles[3], roles.mean(0))
    c = space.transform(roles)
    want = c @ c[3] / (np.linalg.norm(c, axis=1) * np.linalg.norm(c[3]))
    np.testing.assert_allclose(got["cos"], want)
    assert got["cos"].argmax() == 3
    assert got["axis_shift"] == pytest.approx(got["axis"] - got["axis_base"])
    assert np.isnan(measure(None, roles, roles[0], roles[1])["axis_shift"])


def test_nearest_share_counts_replicates_agreeing_with_the_point():
    cos = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.7], [np.nan, np.nan], [0.6, 0.5]])
    assert nearest_share(cos) == pytest.approx(2 / 3)


def test_missing_own_text_and_missing_base_are_clear(planted, tmp_path):
    cfg, _ = planted
    own_text_store(cfg, "ada").unlink()
    with pytest.raises(PersonaDynamicsError, match="no own-text activations of 'ada'.*place"):
        run_place(cfg)
    orphan = cfg.model_copy(update={"checkpoints": cfg.checkpoints[1:]})
    with pytest.raises(PersonaDynamicsError, match="adapter 'ada' has no base checkpoint"):
        base_of(orphan, "ada")
    with pytest.raises(PersonaDynamicsError, match="reference checkpoint 'ada' is an adapter"):
        run_place(cfg.model_copy(update={"reference": "ada"}))


def test_own_text_config_generates_the_default_prompts_with_the_adapter(tmp_path):
    from persona_dynamics.transcripts import transcripts_dir

    cfg = config(tmp_path)
    own = own_text_config(cfg, "ada")
    assert [c.label for c in own.checkpoints] == ["instruct", "ada"]
    assert own.roles.include == ["default"] and own.generation.checkpoint == "ada"
    assert own.capture.checkpoints == ["ada"]
    assert activations_path(own, "ada") == own_text_store(cfg, "ada")
    # the adapter's own transcripts never land in its base's directory
    assert transcripts_dir(own) != transcripts_dir(cfg)
    assert transcripts_dir(own).name == "ada"
