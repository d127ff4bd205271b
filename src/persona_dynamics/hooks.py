"""Forward hooks on decoder blocks: the one way the suite reaches into a model's residual stream.

docs/definitions.md's layer rule: layer i is the output of decoder block i (the block's own output,
never `output_hidden_states[-1]`, which has the final norm applied). `on_blocks` calls a function
with chosen blocks' outputs while a forward runs, optionally stops the forward after one of them,
and always removes its hooks; `block_spans` is its one-sequence read (a token span of each chosen
block's output, for calibrate, drift, traits and shift). The capture backends, their oracle and the
toy organism read through it. `edit_blocks` replaces chosen blocks' outputs (interventions.py's
edits, applied by steering/apply.py). `Reducer` is the capture's in-hook reduction: response tokens
to one float32 vector per sample, while the forward runs, so all layers x tokens x hidden never
exist at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial

import torch

from persona_dynamics.errors import PersonaDynamicsError


def decoder_of(model):
    """The decoder stack (embeddings + blocks + final norm) of a causal LM, with or without PEFT."""
    dec = model.get_decoder()
    if not hasattr(dec, "layers"):
        raise PersonaDynamicsError(f"{type(dec).__name__}: no `.layers` block list to hook")
    return dec


def block_output(out) -> torch.Tensor:
    """A decoder block's hidden states, whether it returns a tensor or a tuple."""
    return out[0] if isinstance(out, tuple) else out


class _Done(Exception):
    """Raised after the block to stop after: nothing above it needs to run."""


@contextmanager
def on_blocks(
    model, fns: Mapping[int, Callable[[torch.Tensor], object]], stop_after: int | None = None
) -> Iterator[None]:
    """While open, every forward of `model` calls `fns[i](h)` with block i's output (B, T, hidden).

    `model` is a causal LM or its decoder; a function's return value is ignored. With `stop_after`
    the forward ends right after that block's function, and so does the with-body (the exception
    that stops it is caught on closing), so make the forward the body's last statement. Stopping
    by exception runs as fast as a truncated block list (benchmarks/capture.py,
    `ratio_middle_stop_vs_truncated`) and never edits the model. The hooks go when it closes.
    """
    blocks = decoder_of(model).layers

    def hook(layer, fn, module, args, out):
        fn(block_output(out))
        if layer == stop_after:
            raise _Done

    handles = [
        blocks[layer].register_forward_hook(partial(hook, layer, fn)) for layer, fn in fns.items()
    ]
    try:
        yield
    except _Done:
        pass
    finally:
        for h in handles:
            h.remove()


def block_spans(
    model, ids: Sequence[int], start: int, end: int, layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Blocks `layers`' outputs over tokens [start, end) of one sequence, {layer: (end - start,
    hidden)} float32: one no-grad forward, stopped after the last layer asked for."""
    device = next(model.parameters()).device
    seen: dict[int, torch.Tensor] = {}

    def keep(i: int, h: torch.Tensor) -> None:
        seen[i] = h[0, start:end].float()

    x = torch.as_tensor(list(ids), device=device)[None]
    with (
        torch.inference_mode(),
        on_blocks(model, {i: partial(keep, i) for i in layers}, stop_after=max(layers)),
    ):
        model(input_ids=x, use_cache=False)
    return seen


def positions_of(kwargs: Mapping, h: torch.Tensor) -> torch.Tensor:
    """The absolute position of each token of a block's input (B, T): the model's `position_ids`
    (generation passes them, left padding and the KV cache included), else 0..T-1."""
    pos = kwargs.get("position_ids")
    if pos is None:
        return torch.arange(h.shape[1], device=h.device).expand(h.shape[0], -1)
    return pos.to(h.device).expand(h.shape[0], -1)


@contextmanager
def edit_blocks(
    model, fns: Mapping[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
) -> Iterator[None]:
    """While open, block i's output h is replaced by `fns[i](h, positions)` in every forward.

    Hooks registered after these (an `on_blocks` reader) see the edited output. The hooks go when
    it closes, also on error.
    """
    blocks = decoder_of(model).layers

    def hook(fn, module, args, kwargs, out):
        h = block_output(out)
        new = fn(h, positions_of(kwargs, h))
        return (new, *out[1:]) if isinstance(out, tuple) else new

    handles = [
        blocks[layer].register_forward_hook(partial(hook, fn), with_kwargs=True)
        for layer, fn in fns.items()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Reducer:
    """Reduces one batch's block outputs to per-sample vectors (or response tokens) in float32.

    The response of row b is tokens [start_b, end_b); `mean` averages them, `last` takes the last
    one, `none` keeps them all. An empty response gives NaN (a mean over nothing), never zeros.
    """

    def __init__(self, start, end, width: int, n_slots: int, aggregation: str, device):
        self.aggregation = aggregation
        self.start, self.end = start.tolist(), end.tolist()
        if aggregation == "none":
            self.tokens: list[list[torch.Tensor]] = [[] for _ in self.start]
            return
        pos = torch.arange(width, device=device)
        s, e = start.to(device)[:, None], end.to(device)[:, None]
        w = (pos == e - 1) & (e > s) if aggregation == "last" else (pos >= s) & (pos < e)
        self.w = w.float()[:, None, :]  # (B, 1, T)
        self.count = self.w.sum(-1)  # (B, 1): 0 for an empty response -> NaN
        self.out: torch.Tensor | None = None
        self.n_slots = n_slots

    def take(self, slot: int, h: torch.Tensor) -> None:
        """Reduce the block output `h` (B, T, hidden) into layer slot `slot`."""
        if self.aggregation == "none":
            for b, (s, e) in enumerate(zip(self.start, self.end, strict=True)):
                self.tokens[b].append(h[b, s:e].float().cpu())
            return
        if self.out is None:
            self.out = torch.empty(h.shape[0], self.n_slots, h.shape[-1], device=h.device)
        if h.is_cuda and h.dtype != torch.float32:
            # 0/1 weights are exact in bf16/fp16; cuBLAS sums in float32 and returns float32,
            # so no float32 copy of the whole block output is made
            total = torch.bmm(self.w.to(h.dtype), h, out_dtype=torch.float32)
        else:
            total = torch.bmm(self.w, h.float())
        self.out[:, slot] = total[:, 0] / self.count

    def result(self):
        """(B, slots, hidden) float32 on the CPU, or per-row (n_tokens, slots, hidden) tensors."""
        if self.aggregation == "none":
            return [torch.stack(t, dim=1) for t in self.tokens]
        return self.out.cpu()
