"""Intermediate checkpoints as branches of one hub repo, offline: list, generate, capture at each.

A local hub cache (`HF_HUB_OFFLINE=1`) holds three different tiny models as three refs of one
repo id, laid out as the hub client writes it (stage-1 pretraining, an RL step, main). Each stage
must resolve the ref to its commit, load those weights and record that commit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from persona_dynamics.capture.backends import reference_capture
from persona_dynamics.capture.tokens import row_key, tokenize
from persona_dynamics.config import dump, load
from persona_dynamics.store import ActivationStore, activations_path
from persona_dynamics.transcripts import read_transcripts, transcripts_dir

from helpers.archs import write_tiny
from helpers.cli import cli
from helpers.hub import lay_out
from helpers.study import make_study

pytestmark = pytest.mark.slow

REPO = "toyorg/olmo2-1b-traj"
REFS = {"main": 0, "stage1-step1000-tokens5B": 1, "rl-step-200": 2}  # ref -> weight seed


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """(cache dir, {ref: commit}, {ref: local copy of its model}) with the hub switched off."""
    root = tmp_path_factory.mktemp("hub")
    models = {ref: write_tiny(root / "src" / ref, "olmo2", seed) for ref, seed in REFS.items()}
    commits = lay_out(root / "cache", REPO, models)
    return root / "cache", commits, models


def offline(cache):
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def test_revisions_lists_the_cached_refs(hub, tmp_path):
    cache, commits, _ = hub
    r = cli("revisions", REPO, env=offline(cache))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"cached\t{ref}\t{commits[ref]}" for ref in sorted(commits)]
    assert "local cache" in r.stderr
    r = cli("revisions", "toyorg/absent", env=offline(cache))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_generate_and_capture_load_and_record_each_revision(hub, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache, commits, models = hub
    cfg = make_study(
        tmp_path / "out",
        checkpoints=[{"label": "instruct", "model": REPO, "revision": "main"}],
        roles={"include": ["pirate"], "question_count": 2},
        generation={"backend": "hf", "temperature": 0.0, "max_tokens": 16, "device": "cpu"},
        capture={"layers": [1, 3], "device": "cpu"},
    )
    base = tmp_path / "base.toml"
    base.write_text(dump(cfg))
    conf = tmp_path / "study.toml"
    r = cli("revisions", REPO, "--match", "step", "--add-to", str(base), "--out", str(conf),
            env=offline(cache))  # fmt: skip
    assert r.returncode == 0, r.stderr
    cfg = load(conf)
    labels = {c.label: c.revision for c in cfg.checkpoints}
    assert labels == {
        "rl-step-200": "rl-step-200",
        "stage1-step1000-tokens5B": "stage1-step1000-tokens5B",
        "instruct": "main",
    }
    for stage in ("generate", "capture"):
        r = cli(stage, str(conf), env=offline(cache))
        assert r.returncode == 0, r.stderr
    out = transcripts_dir(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.dumps(manifest).count(commits["main"]) >= 1
    rows = sorted(read_transcripts(out), key=row_key)
    tok = AutoTokenizer.from_pretrained(models["main"])
    samples = tokenize(rows, tok)
    stores = {}
    for label, ref in labels.items():
        with ActivationStore.open(activations_path(cfg, label)) as st:
            assert st.attrs["commit"] == commits[ref] and st.attrs["revision"] == ref
            stores[label] = np.stack([st.layer(1), st.layer(3)], axis=1)
        model = AutoModelForCausalLM.from_pretrained(models[ref], dtype=torch.float32).eval()
        with torch.inference_mode():
            want = reference_capture(model, samples, [1, 3], "mean").numpy()
        np.testing.assert_allclose(stores[label], want, atol=2e-5, rtol=0)  # that ref's weights
    assert np.abs(stores["rl-step-200"] - stores["instruct"]).max() > 1e-2  # refs really differ
