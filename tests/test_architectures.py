"""Every architecture of the model lines (OLMo-2, OLMo-3, GPT-NeoX) generates and captures alike.

Tiny random-weight builds of each run `generate` and `capture` through the CLI; the store must
equal the one-at-a-time oracle (the same span rule) and, below the last block, transformers' own
`output_hidden_states[i + 1]` (the same layer rule), and nnsight must agree with the hooks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from persona_dynamics.capture.backends import make_backend, reference_capture
from persona_dynamics.capture.plan import collate, make_plan
from persona_dynamics.capture.tokens import row_key, tokenize
from persona_dynamics.config import dump
from persona_dynamics.store import ActivationStore, activations_path
from persona_dynamics.transcripts import read_transcripts, transcripts_dir

from helpers.archs import ARCHS, write_tiny
from helpers.cli import cli
from helpers.study import make_study

pytestmark = pytest.mark.slow


def arch_study(tmp_path, model_dir):
    """Two roles and the default Assistant, three questions, greedy, every layer captured."""
    cfg = make_study(
        tmp_path / "out",
        checkpoints=[{"label": "m", "model": str(model_dir)}],
        roles={"include": ["pirate", "librarian"], "question_count": 3},
        generation={"backend": "hf", "temperature": 0.0, "max_tokens": 24, "device": "cpu"},
        capture={"layers": "all", "batch_tokens": 256, "block_samples": 4, "device": "cpu"},
    )
    conf = tmp_path / "study.toml"
    conf.write_text(dump(cfg))
    return cfg, conf


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_and_capture_follow_the_span_and_layer_rules(tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = write_tiny(tmp_path / arch, arch)
    cfg, conf = arch_study(tmp_path, model_dir)
    for stage in ("generate", "capture"):
        r = cli(stage, str(conf))
        assert r.returncode == 0, r.stderr
    rows = sorted(read_transcripts(transcripts_dir(cfg)), key=row_key)
    assert len(rows) == 3 * (2 * 5 + 6) and sum(r["n_tokens"] for r in rows) > 0
    tok = AutoTokenizer.from_pretrained(model_dir)
    samples = tokenize(rows, tok)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        want = reference_capture(model, samples, [0, 1, 2, 3], "mean").numpy()
        s = max(samples, key=lambda s: s.end - s.start)
        hs = model(torch.as_tensor(s.ids[None], dtype=torch.long), output_hidden_states=True)
    with ActivationStore.open(activations_path(cfg, "m")) as st:
        assert st.keys() == [x.key for x in samples] and st.attrs["n_layers"] == 4
        got = np.stack([st.layer(i) for i in range(4)], axis=1)
        row = st.keys().index(s.key)
    ok = ~np.isnan(want).any(axis=(1, 2))
    assert ok.sum() >= len(samples) - 3  # empty responses are NaN in both
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[ok], want[ok], atol=2e-5, rtol=0)
    for i in range(3):  # layer i is block i's output: hidden_states[i + 1] below the last block
        span = hs.hidden_states[i + 1][0, s.start : s.end].mean(0).numpy()
        np.testing.assert_allclose(got[row, i], span, atol=2e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_nnsight_agrees_with_the_hooks(tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers.transcripts import TRANSCRIPT_ROWS

    model_dir = write_tiny(tmp_path / arch, arch)
    tok = AutoTokenizer.from_pretrained(model_dir)
    samples = tokenize(TRANSCRIPT_ROWS, tok)
    plan = make_plan(samples, 300, block_samples=8)
    got = {}
    for name in ("hooks", "nnsight"):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        backend = make_backend(name, model, [1, 3], "mean", tok)
        rows = [None] * len(samples)
        with torch.inference_mode():
            for batch in plan.batches:
                res = backend(*collate(samples, batch, tok.pad_token_id))
                for j, i in enumerate(batch):
                    rows[i] = res[j]
        got[name] = torch.stack(rows).numpy()
    assert max(len(b) for b in plan.batches) > 1  # padded batches, not one at a time
    np.testing.assert_allclose(got["nnsight"], got["hooks"], atol=1e-4, rtol=0)
