"""`calibrate` and the steering settings: τ percentiles and norms against an independent oracle.

A tiny random OLMo-2 generates a few transcripts; a random GGUF control vector is the steering
direction. The oracle projects every response token of every transcript, read from
transformers' `output_hidden_states` (not our hooks), and takes numpy's percentiles.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from persona_dynamics.capture.tokens import tokenize
from persona_dynamics.config import dump, load
from persona_dynamics.steering.spec import intervention
from persona_dynamics.transcripts import read_transcripts, transcripts_dir
from persona_dynamics.vectors import write_gguf

from helpers.archs import write_tiny
from helpers.cli import cli
from helpers.study import make_study

pytestmark = pytest.mark.slow
LAYERS = [1, 2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    model = write_tiny(root / "m", "olmo2")
    rng = np.random.default_rng(0)
    vec = write_gguf(root / "v.gguf", {i: rng.normal(size=64) for i in (1, 2, 3)}, "olmo2")
    cfg = make_study(
        root / "out",
        checkpoints=[{"label": "m", "model": str(model)}],
        roles={"include": ["pirate", "librarian"], "question_count": 2},
        generation={"backend": "hf", "temperature": 0.0, "max_tokens": 12, "device": "cpu"},
        capture={"device": "cpu"},
        steering={"vector": str(vec), "layers": LAYERS, "settings": [
            {"name": "cap-p25", "mode": "cap", "percentile": 25.0},
            {"name": "push", "mode": "add", "coefficient": 0.5, "layers": [2]},
            {"name": "mean", "mode": "mean_ablate", "value": 1.5, "scope": "response"}]},
    )  # fmt: skip
    conf = root / "study.toml"
    conf.write_text(dump(cfg))
    assert cli("generate", str(conf)).returncode == 0
    r = cli("calibrate", str(conf))
    assert r.returncode == 0, r.stderr
    return cfg, conf, model, vec


def oracle(cfg, model_dir, vec_path):
    """Per-layer (projections of every response token, their norms) from output_hidden_states."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_dynamics.vectors import read_gguf

    dirs = read_gguf(vec_path)[0]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    samples = tokenize(read_transcripts(transcripts_dir(cfg)), tok)
    proj, norms = {i: [] for i in LAYERS}, {i: [] for i in LAYERS}
    with torch.inference_mode():
        for s in samples:
            hs = model(torch.as_tensor(s.ids[None], dtype=torch.long), output_hidden_states=True)
            for i in LAYERS:  # below the last block: hidden_states[i + 1] is block i's output
                h = hs.hidden_states[i + 1][0, s.start : s.end].double().numpy()
                u = dirs[i] / np.linalg.norm(dirs[i])
                proj[i] += list(h @ u)
                norms[i] += list(np.linalg.norm(h, axis=1))
    return proj, norms


def test_percentiles_and_norms_match_the_oracle(run):
    cfg, conf, model_dir, vec = run
    data = json.loads(cfg.path("steering", "calibration.json").read_text())
    assert data["label"] == "m" and data["vector"] == str(vec)
    assert sorted(data["layers"]) == ["1", "2"]
    proj, norms = oracle(cfg, model_dir, vec)
    ivs = {name: intervention(load(conf), name, 4) for name in ("cap-p25", "push", "mean")}
    for i in LAYERS:
        got = data["layers"][str(i)]
        assert got["n_tokens"]["all"] == len(proj[i]) > 20
        assert got["n_tokens"]["default"] > 0 and got["n_tokens"]["roles"] > 0
        np.testing.assert_allclose(got["mean_norm"], np.mean(norms[i]), rtol=1e-5)
        tau = np.percentile(proj[i], 25)
        np.testing.assert_allclose(ivs["cap-p25"].values[i], tau, rtol=1e-4, atol=1e-4)
    iv = ivs["cap-p25"]
    assert iv.mode == "cap" and iv.direction == "floor" and iv.layers == LAYERS
    push = ivs["push"]
    assert push.layers == [2] and push.unit == "norm"
    np.testing.assert_allclose(push.norms[2], np.mean(norms[2]), rtol=1e-5)
    assert ivs["mean"].values == {1: 1.5, 2: 1.5} and ivs["mean"].scope == "response"


def test_a_calibration_of_another_vector_is_refused(run, tmp_path):
    cfg, conf, model_dir, vec = run
    other = write_gguf(tmp_path / "o.gguf", {1: np.ones(64), 2: np.ones(64)}, "olmo2")
    data = load(conf).model_dump(mode="json", exclude_none=True)
    data["steering"]["vector"] = str(other)
    conf2 = tmp_path / "other.toml"
    conf2.write_text(dump(load(conf).model_validate(data)))
    with pytest.raises(Exception, match="calibrated for another vector digest"):
        intervention(load(conf2), "cap-p25", 4)
    r = cli("calibrate", str(conf), "--vector", str(tmp_path / "none.gguf"))
    assert r.returncode == 2 and "none.gguf" in r.stderr and "Traceback" not in r.stderr


def test_a_checkpoint_under_a_setting_generates_and_captures_with_it(run, tmp_path):
    from persona_dynamics.store import ActivationStore, activations_path
    from persona_dynamics.vectors import read_gguf

    cfg, conf, model_dir, vec = run
    data = load(conf).model_dump(mode="json", exclude_none=True)
    data["checkpoints"].append({"label": "m+push", "model": str(model_dir), "intervention": "push"})
    data["capture"] |= {"layers": [1, 2, 3], "device": "cpu"}
    data["reference"] = "m"
    data["steering"]["settings"][1]["coefficient"] = 2.0
    steered = load(conf).model_validate(data)
    conf2 = tmp_path / "steered.toml"
    conf2.write_text(dump(steered))
    r = cli("capture", str(conf2))
    assert r.returncode == 0, r.stderr
    with (
        ActivationStore.open(activations_path(steered, "m")) as a,
        ActivationStore.open(activations_path(steered, "m+push")) as b,
    ):
        assert b.attrs["intervention"] == "push" and a.attrs.get("intervention") is None
        assert json.loads(b.attrs["intervention_spec"])["layers"] == [2]
        np.testing.assert_array_equal(a.layer(1), b.layer(1))  # below the edit: untouched
        u = read_gguf(vec)[0][2]
        u = u / np.linalg.norm(u)
        norm = json.loads(cfg.path("steering", "calibration.json").read_text())["layers"]["2"]
        step = 2.0 * norm["mean_norm"] * u  # every response token moved by c * norm * u
        np.testing.assert_allclose(b.layer(2) - a.layer(2), np.tile(step, (len(a), 1)), atol=1e-4)
        assert np.abs(b.layer(3) - a.layer(3)).max() > 1e-2
    data["generation"]["checkpoint"] = "m+push"
    own = load(conf).model_validate(data)
    conf3 = tmp_path / "own.toml"
    conf3.write_text(dump(own))
    r = cli("generate", str(conf3))
    assert r.returncode == 0, r.stderr
    out = transcripts_dir(own)
    assert out.name == "m+push" and out != transcripts_dir(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert '"name": "push"' in json.dumps(manifest)
    plain = {(r["role"], r["question_idx"]): r["response"] for r in read_transcripts(
        transcripts_dir(cfg))}  # fmt: skip
    pushed = {(r["role"], r["question_idx"]): r["response"] for r in read_transcripts(out)}
    assert plain.keys() == pushed.keys() and plain != pushed
    data["generation"]["backend"] = "openai"
    data["generation"]["base_urls"] = ["http://127.0.0.1:9/v1"]
    data["run_name"] = "served"
    bad = tmp_path / "bad.toml"
    bad.write_text(dump(load(conf).model_validate(data)))
    r = cli("generate", str(bad))
    assert r.returncode == 2 and "cannot apply the intervention 'push'" in r.stderr
