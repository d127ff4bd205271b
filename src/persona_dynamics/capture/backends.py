"""Capture backends: run a batch through a model and reduce chosen blocks' outputs per sample.

All three read the residual stream after decoder block `i` (docs/definitions.md's layer rule,
hooks.py) and reduce it in float32 over the response tokens while the forward runs
(`hooks.Reducer`). They run the decoder alone (no LM head) and stop after the highest layer asked.

- `hooks`: plain PyTorch forward hooks; the default and the fastest.
- `nnsight`: the same reading through an nnsight 0.8 trace (the path to interventions, remote).
- `lens`: TransformerLens 4's `TransformerBridge` hooks `blocks.{i}.hook_out`. It runs OLMo-2 with
  eager attention (the bridge forces it) and is given token ids, so it adds no BOS of its own.
"""

from __future__ import annotations

from functools import partial

import torch

from persona_dynamics.errors import PersonaDynamicsError, require
from persona_dynamics.hooks import Reducer, block_output, decoder_of, on_blocks

BACKENDS = ("hooks", "nnsight", "lens")


class HooksBackend:
    """Forward hooks on the chosen blocks (`hooks.on_blocks`); stops after the highest one."""

    name = "hooks"

    def __init__(self, model, layers: list[int], aggregation: str, tokenizer=None):
        self.decoder = decoder_of(model)
        self.layers, self.aggregation = layers, aggregation
        self.device = next(model.parameters()).device

    def __call__(self, ids, start, end):
        red = Reducer(start, end, ids.shape[1], len(self.layers), self.aggregation, self.device)
        fns = {layer: partial(red.take, slot) for slot, layer in enumerate(self.layers)}
        with on_blocks(self.decoder, fns, stop_after=max(self.layers)):
            self.decoder(input_ids=ids.to(self.device), use_cache=False)
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

    Shares only the hook registration with the backends (no batching, no padding, no early stop,
    no `Reducer`, the LM head runs); returns (n, layers, hidden) float32, or per-sample tensors for
    'none'.
    """
    seen: dict[int, torch.Tensor] = {}

    def keep(i: int, h: torch.Tensor) -> None:
        seen[i] = h[0].double()

    every = {i: partial(keep, i) for i in range(len(decoder_of(model).layers))}
    device = next(model.parameters()).device
    out = []
    for s in samples:
        seen.clear()
        with on_blocks(model, every):
            model(input_ids=torch.as_tensor(s.ids, dtype=torch.long, device=device)[None])
        span = [seen[i][s.start : s.end] for i in layers]
        if aggregation == "none":
            out.append(torch.stack(span, dim=1).float().cpu())
        elif s.end == s.start:
            out.append(torch.full((len(layers), span[0].shape[-1]), float("nan")))
        else:
            pick = [x.mean(0) if aggregation == "mean" else x[-1] for x in span]
            out.append(torch.stack(pick).float().cpu())
    return out if aggregation == "none" else torch.stack(out)
