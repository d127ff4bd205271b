"""Token sequences the toy trains and measures on, and their batches with training targets.

An `Item` has the (ids, start, end) shape of a capture sample, so batches pad through capture's
own `collate`; training adds the response-span mask and the next-token targets.
"""

from __future__ import annotations

from dataclasses import dataclass

from persona_dynamics import chat
from persona_dynamics.capture import plan


@dataclass(frozen=True)
class Item:
    """Token ids of one sequence; the LM loss covers ids[start..end] (response + EOS)."""

    ids: tuple[int, ...]
    start: int
    end: int


def encode(tok, messages, response: str) -> Item:
    """Tokenize a conversation with the project's chat format and response-span rule."""
    enc = chat.encode(tok, list(messages), response)
    return Item(tuple(enc.input_ids), enc.start, enc.end)


def encode_document(tok, text: str, max_len: int = 128) -> Item:
    """A plain-text document as BOS + tokens + EOS, loss on every token."""
    ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"][: max_len - 2]]
    return Item((*ids, tok.eos_token_id), 1, len(ids))


def collate(items: list[Item], pad: int):
    """Capture's right-padded ids, the response-span mask, and the (row, col) positions that predict
    a target with their labels (the response and its EOS).

    Right padding needs no attention mask: causal attention never lets a real token see a pad.
    """
    import torch

    ids, start, end = plan.collate(items, list(range(len(items))), pad)
    span = torch.zeros(ids.shape)
    rows, cols = [], []
    for r, (s, e) in enumerate(zip(start.tolist(), end.tolist(), strict=True)):
        span[r, s:e] = 1.0
        rows += [r] * (e - s + 1)
        cols += range(s - 1, e)
    rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
    return ids, span, rows_t, cols_t, ids[rows_t, cols_t + 1]
