"""Apply interventions to a running model: forward hooks (the default) or an nnsight trace.

`steer(model, interventions)` is the one entry point from Python and notebooks: while the `with`
block is open, every forward and every `generate` of the model is edited. Scopes `prompt` and
`response` need each row's prompt length (`Steering.spans`); positions come from the model's own
`position_ids`, so left padding and the KV cache are handled as generation does them. The nnsight
path edits the same blocks inside a trace; tests hold the two to 1e-5 in float32.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch

from persona_dynamics.errors import PersonaDynamicsError, require
from persona_dynamics.hooks import block_output, decoder_of, edit_blocks
from persona_dynamics.interventions import Intervention, scope_mask

NO_END = torch.iinfo(torch.long).max


class Steering:
    """The interventions in force and the row spans their scopes are measured against."""

    def __init__(self, interventions: Sequence[Intervention], n_layers: int):
        for iv in interventions:
            bad = [layer for layer in iv.layers if not 0 <= layer < n_layers]
            if bad:
                raise PersonaDynamicsError(
                    f"intervention {iv.name!r}: layer(s) {bad} outside the model's "
                    f"0..{n_layers - 1}"
                )
        self.interventions = list(interventions)
        self.starts: torch.Tensor | None = None
        self.ends: torch.Tensor | None = None

    @property
    def layers(self) -> list[int]:
        return sorted({layer for iv in self.interventions for layer in iv.layers})

    def spans(self, starts: Sequence[int], ends: Sequence[int] | None = None) -> None:
        """Row b's prompt is positions below starts[b]; its response runs to ends[b] (or on)."""
        self.starts = torch.as_tensor(list(starts), dtype=torch.long)
        self.ends = (
            torch.full_like(self.starts, NO_END)
            if ends is None
            else torch.as_tensor(list(ends), dtype=torch.long)
        )

    def edit(self, layer: int, h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Every intervention at `layer`, in order, on block output h (B, T, hidden)."""
        for iv in self.interventions:
            if layer not in iv.vectors:
                continue
            if iv.scope in ("prompt", "response"):
                if self.starts is None or len(self.starts) != h.shape[0]:
                    raise PersonaDynamicsError(
                        f"intervention {iv.name!r}: scope '{iv.scope}' needs each row's prompt "
                        f"length (Steering.spans) for a batch of {h.shape[0]}"
                    )
                mask = scope_mask(iv.scope, positions, self.starts, self.ends)
            else:
                mask = scope_mask(iv.scope, positions, positions[:, 0], positions[:, 0])
            h = iv.edit(layer, h, mask)
        return h


@contextmanager
def steer(model, interventions: Intervention | Sequence[Intervention]) -> Iterator[Steering]:
    """While open, `model` (a causal LM or its decoder) runs with the interventions applied."""
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    st = Steering(interventions, len(decoder_of(model).layers))
    with edit_blocks(model, {layer: partial(st.edit, layer) for layer in st.layers}):
        yield st


def nnsight_outputs(
    model,
    ids: torch.Tensor,
    interventions: Sequence[Intervention],
    read: Sequence[int],
    starts: Sequence[int] | None = None,
) -> dict[int, torch.Tensor]:
    """Blocks `read`'s outputs of one forward of `ids` (no padding) with the edits made in nnsight.

    The second implementation of the same edits, for agreement tests and remote execution.
    """
    nnsight = require("nnsight", "nnsight")
    decoder = decoder_of(model)
    st = Steering(interventions, len(decoder.layers))
    if starts is not None:
        st.spans(starts)
    net = nnsight.NNsight(decoder)
    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    out = {}
    with net.trace(ids, use_cache=False):
        for layer in sorted(set(st.layers) | set(read)):  # forward order
            block = net.layers[layer]
            if layer in st.layers:
                h = block_output(block.output)
                new = st.edit(layer, h, positions.to(h.device))
                if isinstance(block.output, tuple):
                    block.output = (new, *block.output[1:])
                else:
                    block.output = new
            if layer in read:
                out[layer] = block_output(block.output).save()
    return {layer: t.detach().clone() for layer, t in out.items()}
