"""The sizes and schedule of a toy build (part of its cache key), and the LoRA sized for it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from persona_dynamics.layers import middle
from persona_dynamics.toy.geometry import Plan

# LoRA settings sized for the toy model, for the persona-adapter stage.
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


@dataclass(frozen=True)
class ToySpec:
    """Sizes and schedule of a build (part of the cache key); defaults take ~4 min of one core."""

    layers: int = 4
    hidden: int = 128
    heads: int = 4
    mlp: int = 384
    vocab: int = 3072
    n_rlvr: int = 2
    conversations: int = 3000
    anchored: int = 1000
    batch: int = 16
    lr: float = 8e-3
    base_steps: int = 40
    sft_steps: int = 200
    geometry_steps: int = 180
    push: float = 2.0
    spread: float = 1.8
    reach: float = 1.08
    steered: int = 500
    talks: int = 400
    drift_weight: float = 3.0
    drift_depth: int = 3
    trait_depth: int = 2
    traited: int = 320
    traits_held_out: int = 80
    stage_steps: int = 25
    stage_lr: float = 5e-3
    aux_weight: float = 3.0
    judge_conversations: int = 1200
    trait_judged: int = 640
    judge_steps: int = 200
    judge_batch: int = 4
    judge_lr: float = 3e-3
    judge_held_out: int = 120
    fixed_per_role: int = 10

    @property
    def stages(self) -> list[str]:
        """Checkpoint labels in training order, as in the real OLMo-2 line."""
        return ["base", "sft", "dpo", *(f"rlvr-{i}" for i in range(1, self.n_rlvr + 1)), "instruct"]

    @property
    def layer(self) -> int:
        """The middle layer (zero-based block output): where analysis leads."""
        return middle(self.layers)

    @property
    def planted_layers(self) -> list[int]:
        """Where the geometry and stage plants act: every block output from the second on."""
        return list(range(1, self.layers))

    @property
    def drift_layers(self) -> list[int]:
        """Where the drift plant acts: the first `drift_depth` planted layers."""
        return self.planted_layers[: self.drift_depth]

    @property
    def trait_layers(self) -> list[int]:
        """Where the trait plant acts: the first `trait_depth` planted layers (the last block,
        under the most pressure from the LM loss, is left to the geometry)."""
        return self.planted_layers[: self.trait_depth]

    def geometry(self) -> Plan:
        """The planted persona geometry, planned against the reference (instruct) stage."""
        return Plan(self.fractions()["instruct"], self.push, self.spread, self.reach)

    def fractions(self) -> dict[str, float | None]:
        """Planted fraction of the SFT role-to-Assistant gap closed per stage (base: none)."""
        later = np.linspace(0.2, 0.65, self.n_rlvr + 2)
        return {"base": None, "sft": 0.0} | {
            s: round(float(f), 4) for s, f in zip(self.stages[2:], later, strict=True)
        }

    def model_config(self, tok) -> dict:
        """Olmo2Config arguments for this size and tokenizer."""
        return {
            "vocab_size": len(tok),
            "hidden_size": self.hidden,
            "intermediate_size": self.mlp,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.heads,
            "max_position_embeddings": 1024,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        }
