"""Capture exactness: every backend against the one-at-a-time oracle, the layer rule, the plan."""

from __future__ import annotations

import pytest
import torch

from persona_dynamics.capture.backends import make_backend, reference_capture
from persona_dynamics.capture.plan import collate, make_plan, padding_fraction, shard_blocks
from persona_dynamics.capture.tokens import tokenize, tokens_digest
from persona_dynamics.toy import single_thread

from helpers.transcripts import TRANSCRIPT_ROWS


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: CI's two cores are shared, and oversubscribed threads crawl."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = tokenize(TRANSCRIPT_ROWS, tok)
    return tok, samples


def load(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def run_backend(backend, samples, tok, batch_tokens=400):
    """Capture every sample through the backend in planned batches; rows in sample order."""
    plan = make_plan(samples, batch_tokens, block_samples=8)
    out = [None] * len(samples)
    with torch.inference_mode():
        for batch in plan.batches:
            res = backend(*collate(samples, batch, tok.pad_token_id))
            for r, i in enumerate(batch):
                out[i] = res[r]
    return out


def max_diff(got, want) -> float:
    """Max |difference| over rows; NaN rows (empty responses) must be NaN in both."""
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert torch.equal(torch.isnan(g), torch.isnan(w))
        if g.numel():
            worst = max(worst, torch.nan_to_num(g - w).abs().max().item())
    return worst


@pytest.mark.parametrize("aggregation", ["mean", "last"])
def test_all_backends_match_the_oracle(tiny_model_dir, tiny, aggregation):
    tok, samples = tiny
    layers = [0, 2, 3]
    with torch.inference_mode():
        want = reference_capture(load(tiny_model_dir), samples, layers, aggregation)
    assert torch.isnan(want).any(dim=(1, 2)).sum() == 1  # the empty response
    plan = make_plan(samples, 400, 8)
    assert padding_fraction(samples, plan) > 0 and max(len(b) for b in plan.batches) > 4
    diffs = {}
    for name in ("hooks", "nnsight", "lens"):
        backend = make_backend(name, load(tiny_model_dir), layers, aggregation, tok)
        diffs[name] = max_diff(run_backend(backend, samples, tok), list(want))
    assert diffs["hooks"] < 1e-5, diffs
    assert max(diffs.values()) < 1e-4, diffs


def test_per_token_capture_matches_the_oracle(tiny_model_dir, tiny):
    tok, samples = tiny
    model = load(tiny_model_dir)
    with torch.inference_mode():
        want = reference_capture(model, samples, [1, 3], "none")
    got = run_backend(make_backend("hooks", model, [1, 3], "none"), samples, tok)
    assert [g.shape[0] for g in got] == [s.n_response for s in samples]
    assert max_diff(got, want) < 1e-5


def test_last_block_is_the_pre_norm_residual(tiny_model_dir, tiny):
    """Layer i is block i's output; output_hidden_states[-1] carries the final norm: never used."""
    tok, samples = tiny
    model = load(tiny_model_dir)
    s = next(s for s in samples if s.n_response > 3)
    got = run_backend(make_backend("hooks", model, [0, 1, 2, 3], "mean"), [s], tok)[0]
    with torch.inference_mode():
        hs = model(torch.as_tensor(s.ids[None], dtype=torch.long), output_hidden_states=True)
        hs = hs.hidden_states
        resid = {}
        hook = model.model.layers[3].register_forward_hook(lambda m, a, o: resid.update(h=o))
        model.model(torch.as_tensor(s.ids[None], dtype=torch.long))
        hook.remove()
    span = slice(s.start, s.end)
    for i in range(3):  # below the last block, hidden_states[i + 1] is block i's output
        torch.testing.assert_close(got[i], hs[i + 1][0, span].mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(got[3], resid["h"][0, span].mean(0), rtol=0, atol=1e-5)
    normed = hs[-1][0, span].mean(0)
    assert (got[3] - normed).abs().max() > 0.1  # the final norm really changes it


def test_nothing_above_the_top_layer_runs(tiny_model_dir, tiny):
    tok, samples = tiny
    model = load(tiny_model_dir)
    calls = {"block3": 0, "norm": 0, "head": 0}
    model.model.layers[3].register_forward_hook(lambda *a: calls.__setitem__("block3", 1))
    model.model.norm.register_forward_hook(lambda *a: calls.__setitem__("norm", 1))
    model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", 1))
    run_backend(make_backend("hooks", model, [1, 2], "mean"), samples, tok)
    assert calls == {"block3": 0, "norm": 0, "head": 0}
    run_backend(make_backend("hooks", model, [3], "mean"), samples, tok)
    assert calls == {"block3": 1, "norm": 0, "head": 0}


def test_plan_is_pure_sorted_and_under_budget(tiny):
    _, samples = tiny
    plan = make_plan(samples, batch_tokens=160, block_samples=8)
    again = make_plan(samples[::-1], 160, 8)
    keys = [[samples[i].key for i in b] for b in plan.batches]
    assert keys == [[samples[::-1][i].key for i in b] for b in again.batches]
    flat = [i for b in plan.batches for i in b]
    assert sorted(flat) == list(range(len(samples)))
    lengths = [len(samples[i].ids) for i in flat]
    assert lengths == sorted(lengths, reverse=True)
    for b in plan.batches:
        width = len(samples[b[0]].ids)
        assert len(b) == 1 or len(b) * width <= 160
    assert all(len(plan.block_samples(k)) >= 8 for k in range(len(plan.blocks) - 1))
    assert padding_fraction(samples, plan) < 0.25
    n = len(plan.blocks)
    shards = [shard_blocks(n, (i, 3)) for i in range(3)]
    assert sorted(sum(shards, [])) == list(range(n))
    assert plan.digest(samples) != make_plan(samples, 200, 8).digest(samples)


def test_tokens_digest_is_order_free_and_content_bound(tiny):
    _, samples = tiny
    assert tokens_digest(samples) == tokens_digest(samples[::-1])
    changed = [*samples[:-1], type(samples[-1])(samples[-1].key, samples[-1].ids[:-1], 0, 0)]
    assert tokens_digest(changed) != tokens_digest(samples)
