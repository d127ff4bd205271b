"""Chat formatting and the token span of a response: the one place that decides both.

Generation renders prompts here, capture renders prompt + response here, so the text a model was
asked with and the text it is read back with are the same string. The response span follows
docs/definitions.md's rule: a token belongs to the response when its character offsets lie inside
the response text; a token that straddles the header/response boundary is out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from persona_dynamics.errors import PersonaDynamicsError

SPAN_RULE = "char-offsets-inside/v1"

# OLMo-2 Instruct's (Tulu) format. BOS and EOS are both <|endoftext|>; a non-final assistant turn
# is followed by "\n"; the generation prompt is "<|assistant|>\n"; no system block without one.
OLMO2_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)
OLMO2_SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|pad|>"]

Message = dict[str, str]


def template_hash(tokenizer) -> str:
    """Hash of the tokenizer's chat template, recorded in manifests (16 hex digits)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise PersonaDynamicsError(
            f"tokenizer of '{getattr(tokenizer, 'name_or_path', '?')}' has no chat template; "
            "use an instruct checkpoint's tokenizer (base checkpoints have none)"
        )
    if isinstance(template, dict):
        template = "\n".join(f"{k}:{v}" for k, v in sorted(template.items()))
    return hashlib.sha256(template.encode()).hexdigest()[:16]


def prompt_text(tokenizer, messages: list[Message]) -> str:
    """The exact text a model is asked with: the chat template plus the generation header."""
    template_hash(tokenizer)  # fails clearly when there is no template
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def conversation_text(tokenizer, messages: list[Message], response: str) -> tuple[str, int, int]:
    """Render messages + the assistant's response; return (text, start, end) of the response chars.

    The response is located after the rendered prompt, so a template that adds headers, a BOS or
    trailing end tokens never shifts the span; a template that alters the response text is refused.
    """
    prefix = prompt_text(tokenizer, messages)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}], tokenize=False
    )
    if not full.startswith(prefix) or not full[len(prefix) :].startswith(response):
        raise PersonaDynamicsError(
            "the chat template does not render the response verbatim after the generation prompt; "
            "the response span cannot be located by character offsets"
        )
    return full, len(prefix), len(prefix) + len(response)


@dataclass(frozen=True)
class Encoded:
    """Token ids of one transcript and the half-open token range [start, end) of its response."""

    input_ids: list[int]
    start: int
    end: int

    @property
    def n_response(self) -> int:
        return self.end - self.start


def response_token_range(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """Token range whose character offsets lie inside [start, end); straddling tokens are out.

    Zero-width tokens (special tokens some tokenizers give (0, 0) offsets) are never inside.
    The tokens inside are contiguous; anything else is a tokenizer we cannot trust, and refused.
    """
    inside = [i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]
    if not inside:
        return 0, 0
    lo, hi = inside[0], inside[-1] + 1
    if hi - lo != len(inside):
        raise PersonaDynamicsError("response tokens are not contiguous; offsets are inconsistent")
    return lo, hi


def encode(tokenizer, messages: list[Message], response: str) -> Encoded:
    """Tokenize a transcript as its model reads it; find the response tokens by the span rule."""
    text, start, end = conversation_text(tokenizer, messages, response)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    lo, hi = response_token_range([tuple(o) for o in enc["offset_mapping"]], start, end)
    return Encoded(list(enc["input_ids"]), lo, hi)
