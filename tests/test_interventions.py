"""Interventions: the math against its formulas, and hooks vs nnsight on a real model (< 1e-5).

The model checks use a tiny random OLMo-2 (head_dim 32): an edit at block L changes block L's
output by exactly the formula, leaves the blocks below alone, and the two implementations agree
on a block above; batched left-padded generation under an edit equals one prompt at a time.
"""

from __future__ import annotations

from contextlib import ExitStack
from functools import partial

import pytest
import torch

from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.hooks import on_blocks
from persona_dynamics.interventions import (
    Intervention,
    add,
    cap,
    scope_mask,
    set_projection,
    unit,
)
from persona_dynamics.steering.apply import nnsight_outputs, steer

from helpers.archs import write_tiny

g = torch.Generator().manual_seed(0)
H = torch.randn(3, 7, 16, generator=g) * 3
V = torch.randn(16, generator=g)
U = V / V.norm()


def proj(h):
    return h @ U


def test_add_and_set_projection_follow_their_formulas():
    torch.testing.assert_close(add(H, V, -2.5), H - 2.5 * V)
    for value in (0.0, 1.7, -4.0):
        out = set_projection(H, V, value)
        torch.testing.assert_close(proj(out), torch.full(H.shape[:2], value), atol=1e-5, rtol=0)
        ortho = lambda h: h - proj(h)[..., None] * U  # noqa: E731
        torch.testing.assert_close(ortho(out), ortho(H), atol=1e-5, rtol=0)
    assert (proj(H).abs() > 0.1).all()  # the ablation above really moved something


def test_ceiling_and_floor_hold_the_projection_and_touch_nothing_else():
    tau = float(proj(H).median())
    ceil, floor = cap(H, V, tau, "ceiling"), cap(H, V, tau, "floor")
    above = proj(H) > tau
    assert above.any() and (~above).any()
    assert (proj(ceil) <= tau + 1e-5).all() and (proj(floor) >= tau - 1e-5).all()
    torch.testing.assert_close(ceil[~above], H[~above])  # already at most τ: untouched
    torch.testing.assert_close(floor[above], H[above])
    torch.testing.assert_close(proj(ceil[above]), torch.full((int(above.sum()),), tau))
    formula = H - (proj(H) - tau).clamp(min=0)[..., None] * U
    torch.testing.assert_close(ceil, formula)


def test_a_ceiling_on_the_negated_axis_is_a_floor_on_the_axis():
    for tau in (-2.0, 0.0, 1.3):
        torch.testing.assert_close(cap(H, -V, -tau, "ceiling"), cap(H, V, tau, "floor"))
    assert not torch.allclose(cap(H, V, 0.0, "ceiling"), cap(H, V, 0.0, "floor"))


def test_scope_masks_on_a_left_padded_batch():
    pos = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 0, 1]])  # row 1: three pads then 2 tokens
    starts, ends = torch.tensor([3, 1]), torch.tensor([5, 2])
    assert scope_mask("prompt", pos, starts, ends).tolist() == [
        [True, True, True, False, False], [True, True, True, True, False]]  # fmt: skip
    assert scope_mask("response", pos, starts, ends).tolist() == [
        [False, False, False, True, True], [False, False, False, False, True]]  # fmt: skip
    assert scope_mask("last", pos, starts, ends)[:, -1].all()
    assert scope_mask("last", pos, starts, ends).sum() == 2
    assert scope_mask("all", pos, starts, ends).all()


def test_norm_units_scale_the_unit_vector_by_the_layers_mean_norm():
    iv = Intervention("add", {2: V}, coefficient=0.5, unit="norm", norms={2: 8.0})
    mask = torch.ones(H.shape[:2], dtype=torch.bool)
    torch.testing.assert_close(iv.edit(2, H, mask), H + 4.0 * U)
    raw = Intervention("add", {2: V}, coefficient=0.5)
    torch.testing.assert_close(raw.edit(2, H, mask), H + 0.5 * V)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "cap", "vectors": {1: V}}, "needs a threshold τ for every layer [1]"),
        ({"mode": "mean_ablate", "vectors": {1: V}, "values": {2: 0.0}}, "reference projection"),
        ({"mode": "add", "vectors": {1: V}, "unit": "norm"}, "mean residual norm for [1]"),
        ({"mode": "push", "vectors": {1: V}}, "unknown intervention mode 'push'"),
        ({"mode": "add", "vectors": {1: V}, "scope": "middle"}, "unknown intervention scope"),
        ({"mode": "add", "vectors": {}}, "no layers"),
    ],
)
def test_bad_specs_are_refused_naming_what_is_missing(kwargs, message):
    with pytest.raises(PersonaDynamicsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Intervention(**kwargs)
    with pytest.raises(PersonaDynamicsError, match="zero"):
        unit(torch.zeros(4))


# --- on a model ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = write_tiny(tmp_path_factory.mktemp("tiny32"), "olmo2")
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d)
    return model, tok


def blocks_out(model, ids, layers, interventions=(), starts=None):
    """Block outputs of one forward, read by a hook registered after the edits."""
    seen = {}

    def keep(i, h):
        seen[i] = h.clone()

    readers = {i: partial(keep, i) for i in layers}
    with ExitStack() as stack:
        if interventions:
            st = stack.enter_context(steer(model, list(interventions)))
            if starts is not None:
                st.spans(starts)
        stack.enter_context(on_blocks(model, readers))
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False)
    return seen


def ids_of(tok, texts, n=7):
    """Equal-length rows of token ids (no padding), the first `n` tokens of each text."""
    rows = [tok(t)["input_ids"][:n] for t in texts]
    assert all(len(r) == n for r in rows)
    return torch.tensor(rows)


def vectors(model, layers, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {i: torch.randn(model.config.hidden_size, generator=gen) for i in layers}


def test_an_edit_changes_its_block_by_the_formula_and_nothing_below(tiny):
    model, tok = tiny
    ids = ids_of(tok, ["Arr, matey! The sea be calling me", "As an AI assistant, I am happy to"])
    v = vectors(model, [1])
    plain = blocks_out(model, ids, [0, 1, 3])
    iv = Intervention("add", v, coefficient=3.0)
    edited = blocks_out(model, ids, [0, 1, 3], [iv])
    torch.testing.assert_close(edited[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(edited[1], plain[1] + 3.0 * v[1], rtol=0, atol=1e-5)
    assert (edited[3] - plain[3]).abs().max() > 1e-2  # it propagates
    after = blocks_out(model, ids, [1])  # the hooks are gone once the block closes
    torch.testing.assert_close(after[1], plain[1], rtol=0, atol=0)


def modes(model, ids):
    v = vectors(model, [1, 2])
    plain = blocks_out(model, ids, [1, 2])
    median = {i: float((plain[i] @ unit(v[i])).median()) for i in (1, 2)}
    return [
        Intervention("add", v, coefficient=-2.0, scope="response"),
        Intervention("add", v, coefficient=1.5, unit="norm", norms={1: 4.0, 2: 5.0}, scope="last"),
        Intervention("ablate", v, scope="prompt"),
        Intervention("mean_ablate", v, values={1: 0.5, 2: -0.5}),
        Intervention("cap", v, values=median, direction="ceiling"),
        Intervention("cap", v, values=median, direction="floor", scope="response"),
    ]


@pytest.mark.parametrize("which", range(6))
def test_hooks_and_nnsight_agree(tiny, which):
    model, tok = tiny
    ids = ids_of(tok, ["Arr, matey! The sea be calling me", "Let me walk you through the numbers"])
    iv = modes(model, ids)[which]
    starts = [3, 5]
    hooks = blocks_out(model, ids, [3], [iv], starts)[3]
    nn = nnsight_outputs(model, ids, [iv], read=[3], starts=starts)[3]
    plain = blocks_out(model, ids, [3])[3]
    assert (hooks - plain).abs().max() > 1e-3, iv  # the edit did something
    torch.testing.assert_close(nn, hooks, rtol=0, atol=1e-5)


def test_scoped_edits_need_the_row_spans(tiny):
    model, tok = tiny
    ids = ids_of(tok, ["Arr, matey! The sea be calling me"])
    iv = Intervention("ablate", vectors(model, [1]), scope="prompt", name="axis-prompt")
    with pytest.raises(PersonaDynamicsError, match="'axis-prompt': scope 'prompt' needs"):
        blocks_out(model, ids, [1], [iv])
    with pytest.raises(PersonaDynamicsError, match=r"layer\(s\) \[9\] outside the model's 0..3"):
        blocks_out(model, ids, [1], [Intervention("add", vectors(model, [9]))])


def test_batched_generation_under_an_edit_equals_one_prompt_at_a_time(tiny):
    model, tok = tiny
    tok.padding_side = "left"
    prompts = ["Arr, matey! The sea be", "Hi", "Let me walk you through the numbers step"]
    v = vectors(model, [1, 2], seed=3)
    ivs = [Intervention("add", v, coefficient=4.0, scope="prompt"),
           Intervention("cap", v, values={1: 0.0, 2: 0.0}, scope="response")]  # fmt: skip

    def run(texts):
        enc = tok(texts, return_tensors="pt", padding=True)
        with steer(model, ivs) as st, torch.inference_mode():
            st.spans(enc.attention_mask.sum(1).tolist())
            out = model.generate(**enc, max_new_tokens=6, do_sample=False,
                                 pad_token_id=tok.pad_token_id)  # fmt: skip
        return [row[enc.input_ids.shape[1]:].tolist() for row in out]  # fmt: skip

    batched = run(prompts)
    alone = [run([p])[0] for p in prompts]
    assert batched == alone
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        plain = model.generate(**enc, max_new_tokens=6, do_sample=False,
                               pad_token_id=tok.pad_token_id)  # fmt: skip
    plain = [row[enc.input_ids.shape[1]:].tolist() for row in plain]  # fmt: skip
    assert plain != batched  # the edit changed what was generated
