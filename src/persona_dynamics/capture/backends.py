"""Capture backends: run a batch through a model and reduce chosen blocks' outputs per sample.

All three read the residual stream after decoder block `i` (DESIGN.md's layer rule: the block's
own output, never `output_hidden_states[-1]`, which has the final norm applied) and reduce it in
float32 over the response tokens while the forward runs, so all layers x tokens x hidden never
exist at once. They run the decoder alone (no LM head) and stop after the highest layer asked.

- `hooks`: plain PyTorch forward hooks; the default and the fastest.
- `nnsight`: the same reading through an nnsight 0.8 trace (the path to interventions, remote).
- `lens`: TransformerLens 4's `TransformerBridge` hooks `blocks.{i}.hook_out`. It runs OLMo-2 with
  eager attention (the bridge forces it) and is given token ids, so it adds no BOS of its own.
"""

from __future__ import annotations

from functools import partial

import torch

from persona_dynamics.errors import PersonaDynamicsError, require

BACKENDS = ("hooks", "nnsight", "lens")


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
    """Raised after the highest requested block: nothing above it needs to run."""


class HooksBackend:
    """Forward hooks on the chosen blocks; the forward stops after the highest one.

    Stopping by an exception from the last hook runs as fast as a truncated block list
    (benchmarks/capture.py, `ratio_middle_stop_vs_truncated`) and never edits the model.
    """

    name = "hooks"

    def __init__(self, model, layers: list[int], aggregation: str, tokenizer=None):
        self.decoder = decoder_of(model)
        self.layers, self.aggregation = layers, aggregation
        self.device = next(model.parameters()).device

    def __call__(self, ids, start, end):
        red = Reducer(start, end, ids.shape[1], len(self.layers), self.aggregation, self.device)
        top = max(self.layers)

        def hook(slot, layer, module, args, out):
            red.take(slot, block_output(out))
            if layer == top:
                raise _Done

        blocks = self.decoder.layers
        handles = [
            blocks[layer].register_forward_hook(partial(hook, slot, layer))
            for slot, layer in enumerate(self.layers)
        ]
        try:
            self.decoder(input_ids=ids.to(self.device), use_cache=False)
        except _Done:
            pass
        finally:
            for h in handles:
                h.remove()
        return red.result()


class NnsightBackend:
    """The same reading inside an nnsight trace; the trace stops after the highest block."""

    name = "nnsight"

    def __init__(self, model, layers: list[int], aggregation: str, tokenizer=None):
        self.nnsight = require("nnsight", "nnsight")
        self.net = self.nnsight.NNsight(decoder_of(model))
        self.layers, self.aggregation = layers, aggregation
        self.device = next(model.parameters()).device

    def __call__(self, ids, start, end):
        red = Reducer(start, end, ids.shape[1], len(self.layers), self.aggregation, self.device)
        with self.net.trace(ids.to(self.device), use_cache=False) as tracer:
            for slot, layer in enumerate(self.layers):  # ascending: nnsight reads in forward order
                red.take(slot, block_output(self.net.layers[layer].output))
            tracer.stop()
        return red.result()


class LensBackend:
    """TransformerLens 4 bridge hooks on `blocks.{i}.hook_out`, stopping after the highest block.

    The bridge needs a plain HF model (merge adapters first) and switches it to eager attention.
    """

    name = "lens"

    def __init__(self, model, layers: list[int], aggregation: str, tokenizer=None):
        if tokenizer is None:
            raise PersonaDynamicsError("the lens backend needs the tokenizer")
        bridge = require("lens", "transformer_lens.model_bridge").TransformerBridge
        self.device = next(model.parameters()).device
        self.bridge = bridge.boot_transformers(
            model.config.name_or_path or "local",
            hf_model=model,
            tokenizer=tokenizer,
            device=self.device,
            dtype=next(model.parameters()).dtype,
        )
        self.layers, self.aggregation = layers, aggregation

    def __call__(self, ids, start, end):
        red = Reducer(start, end, ids.shape[1], len(self.layers), self.aggregation, self.device)

        def hook(slot, h, hook):
            red.take(slot, h)

        hooks = [
            (f"blocks.{layer}.hook_out", partial(hook, slot))
            for slot, layer in enumerate(self.layers)
        ]
        self.bridge.run_with_hooks(
            ids.to(self.device),
            fwd_hooks=hooks,
            stop_at_layer=max(self.layers) + 1,
            return_type=None,
        )
        return red.result()


def make_backend(name: str, model, layers: list[int], aggregation: str, tokenizer=None):
    """The backend called `name` over `model`, reading `layers` reduced by `aggregation`.

    Layer slots follow ascending layer order, the order in which the forward reaches them.
    """
    cls = {"hooks": HooksBackend, "nnsight": NnsightBackend, "lens": LensBackend}.get(name)
    if cls is None:
        raise PersonaDynamicsError(
            f"unknown capture backend '{name}' (known: {', '.join(BACKENDS)})"
        )
    if list(layers) != sorted(set(layers)):
        raise PersonaDynamicsError(f"capture layers must be ascending and distinct, not {layers}")
    return cls(model, layers, aggregation, tokenizer)


def reference_capture(model, samples, layers: list[int], aggregation: str):
    """The oracle: one sample at a time through the whole model, hooks on every block, manual mean.

    Deliberately shares nothing with the backends (no batching, no padding, no early stop, the
    LM head runs); returns (n, layers, hidden) float32, or per-sample tensors for 'none'.
    """
    blocks = decoder_of(model).layers
    device = next(model.parameters()).device
    out = []
    for s in samples:
        seen: dict[int, torch.Tensor] = {}
        handles = [
            b.register_forward_hook(
                lambda m, a, o, i=i, seen=seen: seen.__setitem__(i, block_output(o)[0].double())
            )
            for i, b in enumerate(blocks)
        ]
        try:
            model(input_ids=torch.as_tensor(s.ids, dtype=torch.long, device=device)[None])
        finally:
            for h in handles:
                h.remove()
        span = [seen[i][s.start : s.end] for i in layers]
        if aggregation == "none":
            out.append(torch.stack(span, dim=1).float().cpu())
        elif s.end == s.start:
            out.append(torch.full((len(layers), span[0].shape[-1]), float("nan")))
        else:
            pick = [x.mean(0) if aggregation == "mean" else x[-1] for x in span]
            out.append(torch.stack(pick).float().cpu())
    return out if aggregation == "none" else torch.stack(out)
