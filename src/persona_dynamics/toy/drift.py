"""The planted persona drift: in some conversation families the Assistant leaves its end of the axis
turn by turn.

The paper finds the Assistant's projection on its axis falling over long conversations of some
kinds (therapy-like talk, questions about the model's own nature) and holding in others (coding,
writing help). The toy plants that on the drift stage's own shipped scripts: in the geometry phase
multi-turn conversations (a family's script, its first turns in order, no system prompt, the
Assistant answering each turn as it answers one question) pin each reply's mean, at every planted
layer, to the default's place along g moved `PER_TURN[family]` times the turn index away from
the Assistant. The unit is the reference stage's Assistant-to-role-mean distance D along the axis,
so the drift stage's per-turn slope of projections, divided by D, reads the planted figure back.
"""

from __future__ import annotations

import numpy as np

from persona_dynamics.toy.geometry import Plan

# Planted per-turn change of the Assistant's projection, in units of D (negative: away from it).
PER_TURN = {"therapy": -0.15, "philosophy": -0.1, "coding": 0.0, "writing": 0.0}
TURNS = 4  # conversation length the plant trains and the build measures (user turns)
# What the plant promises: on sft, where it is planted, each family's slope within `sft_within`
# of PER_TURN; later stages keep the drifting families falling faster than the steady ones.
# Therapy is learned at full strength, philosophy at about 0.7 (-0.07 recovered on sft).
CLAIMS = {"sft_within": 0.06, "later": "drifting families fall faster than steady ones"}


def offset(family: str, turn: int, plan: Plan) -> float:
    """The reply's planned coordinate along g relative to the pushed default, in SFT-gap units G.

    On the reference stage D = (1 - f_ref) * push * G: the geometry phase puts the default push*G
    from the role centroid and the later stages move the roles f_ref of that toward it.
    """
    return PER_TURN[family] * turn * (1.0 - plan.f_ref) * plan.push


def place(
    h: np.ndarray, default: np.ndarray, g: np.ndarray, size: float, talks: list, plan: Plan
) -> np.ndarray:
    """Targets for the talks' reply means `h`: each (family, turn)'s mean moved along unit `g`
    to `offset` x `size` (the layer's SFT gap G) from the `default` mean; the rest kept."""
    out = h.copy()
    keys = [(t.family, t.turn) for t in talks]
    for key in dict.fromkeys(keys):
        rows = np.array([i for i, k in enumerate(keys) if k == key])
        along = ((h[rows] - default) @ g).mean()
        out[rows] += (offset(*key, plan) * size - along) * g
    return out


def record(layers: list[int], talks: int) -> dict:
    """What toy.json says was planted (`drift`)."""
    return {
        "method": "multi-turn conversations (user turns drawn from the shipped drift scripts of "
        "each family, no system prompt) trained in the geometry phase with each reply's mean at "
        "the planted layers pinned along the role-to-Assistant direction to the default's place "
        "moved per_turn x D per turn; kept by every later stage (base not planted)",
        "per_turn": PER_TURN,
        "unit": "the reference stage's Assistant-to-role-mean distance along the axis, per turn",
        "turns": TURNS,
        "layers": layers,
        "scripts": {family: f"{family}.json" for family in PER_TURN},
        "conversations": talks,
        "claims": CLAIMS,
    }
