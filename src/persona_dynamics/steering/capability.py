"""Capability under a setting: perplexity of the model on held-out text with the edit applied.

The text is the unsteered baseline's default-Assistant transcripts (prompt and response, the
response tokens scored) unless `steering.capability_text` names a file of plain passages (one
per line), so "the score moved, the capability held" is measured on the same footing.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path

import torch

from persona_dynamics.chat import encode
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.interventions import Intervention
from persona_dynamics.steering.apply import steer


def passages(path: Path) -> list[str]:
    """The non-empty lines of a plain-text file."""
    if not path.is_file():
        raise PersonaDynamicsError(f"{path}: no capability text file")
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    if not lines:
        raise PersonaDynamicsError(f"{path}: the capability text is empty")
    return lines


def encoded(tokenizer, rows: list[dict], texts: list[str]) -> list[tuple[list[int], int, int]]:
    """(ids, start, end) of each transcript's response span, or of each whole plain passage."""
    out = []
    for r in rows:
        e = encode(tokenizer, r["messages"], r["response"])
        if e.n_response > 1:
            out.append((e.input_ids, e.start, e.end))
    for t in texts:
        ids = tokenizer(t, add_special_tokens=True)["input_ids"]
        out.append((ids, 0, len(ids)))
    return out


def perplexity(model, items: list[tuple[list[int], int, int]], edit: Intervention | None) -> float:
    """exp(mean negative log-likelihood) of every scored token, the edit applied (if any)."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    for ids, start, end in items:
        x = torch.as_tensor(ids, device=device)[None]
        with torch.inference_mode(), steer(model, edit) if edit else nullcontext() as st:
            if st is not None:
                st.spans([start], [end])
            logits = model(input_ids=x, use_cache=False).logits[0].float()
        lo = max(start, 1)  # token t is predicted from position t - 1
        logp = torch.log_softmax(logits[lo - 1 : end - 1], dim=-1)
        target = x[0, lo:end]
        nll -= logp.gather(1, target[:, None]).sum().item()
        count += end - lo
    if count == 0:
        raise PersonaDynamicsError("no tokens to measure capability on")
    return math.exp(nll / count)
