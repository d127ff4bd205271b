"""The response span rule (chat.SPAN_RULE) on the OLMo-2 chat format, with two tokenizers.

`toy.build_tokenizer` pre-tokenizes like GPT-2; the second tokenizer pre-tokenizes with the
cl100k-style split that OLMo-2's tokenizer uses (the hub is out of reach here, so its pre-tokenizer
is rebuilt locally and trained on a few texts). On both, the response span must be exactly the
tokens whose characters lie inside the response: a leading space stays in, a token that merges
the header's newline with the response's is out, an empty response has no tokens.
"""

from __future__ import annotations

import pytest

from persona_dynamics.chat import conversation_text, encode
from persona_dynamics.toy import build_tokenizer

TEXTS = [
    "Hello there.\n\nTwo newlines here.\n\n\n",
    " leading space and more",
    "Arr!! matey?\n",
] * 50
OLMO2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
MESSAGES = [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Hi?"}]


def olmo2_style_tokenizer():
    """A BPE with OLMo-2's pre-tokenization (cl100k-style split, then byte-level), trained here."""
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(OLMO2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return build_tokenizer(TEXTS, vocab_size=400, pre_tokenizer=split)


@pytest.fixture(scope="module", params=["toy", "olmo2-split"])
def tok(request):
    return (
        build_tokenizer(TEXTS, vocab_size=400)
        if request.param == "toy"
        else olmo2_style_tokenizer()
    )


def pieces(tok, response):
    text, a, b = conversation_text(tok, MESSAGES, response)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return text, a, b, enc["offset_mapping"]


def test_rendering_is_the_olmo2_format(tok):
    text, a, b, _ = pieces(tok, "Ahoy.")
    assert text == (
        "<|endoftext|><|system|>\nBe a pirate.\n<|user|>\nHi?\n<|assistant|>\nAhoy.<|endoftext|>"
    )
    assert text[a:b] == "Ahoy."


@pytest.mark.parametrize("response", ["Hello there.", " leading space", "!!Arr"])
def test_span_is_exactly_the_response(tok, response):
    text, a, b, offsets = pieces(tok, response)
    e = encode(tok, MESSAGES, response)
    assert tok.decode(e.input_ids[e.start : e.end]) == response
    assert offsets[e.start][0] == a and offsets[e.end - 1][1] == b
    assert tok.convert_ids_to_tokens(e.input_ids[e.end]) == "<|endoftext|>"
    assert text[offsets[e.start - 1][0] : offsets[e.start - 1][1]] == "\n"  # the header's newline


def test_token_merging_across_the_boundary_is_out(tok):
    response = "\n\nTwo newlines"
    text, a, b, offsets = pieces(tok, response)
    e = encode(tok, MESSAGES, response)
    lo, hi = offsets[e.start - 1]
    assert lo < a < hi, "the case must really merge the header newline into the response's"
    assert text[lo:hi] == "\n\n"
    assert tok.decode(e.input_ids[e.start : e.end]) == response[1:]
    assert all(a <= x and y <= b for x, y in offsets[e.start : e.end])


def test_empty_response_has_no_tokens(tok):
    e = encode(tok, MESSAGES, "")
    assert e.n_response == 0 and e.start == e.end
