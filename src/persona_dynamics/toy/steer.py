"""The planted steering relation: adding c times the axis at the middle layer moves the score.

During the geometry phase and every later stage, some role-play conversations are trained with
c·m·û added to the middle block's output at every token (û: the unit role-to-Assistant direction
g there, m: the layer's mean residual norm over response tokens, as `calibrate` measures it) and
their answer rewritten at a shifted planted score: one step toward the Assistant per `STEP` of
c > 0, one step deeper into the role per `STEP` of c < 0. So the steer stage's `add` setting, in
norm units on the analysis' axis, moves the toy judge's scores monotonically in c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from persona_dynamics.toy.styles import FULL, HELPS

TRAINED = (-1.0, -0.5, 0.5, 1.0)  # coefficients the plant trains on, in mean-norm units
STEP = 0.5  # one score step per this much c
GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)  # where the build and the tests measure it


def shifted(score: int, c: float) -> int:
    """The planted score of a role answer written under coefficient c (`score` unsteered).

    c > 0 lowers it a step per STEP but not below HELPS (a refusal stays one); c < 0 raises it a
    step per STEP up to FULL.
    """
    k = int(round(c / STEP))
    if k > 0:
        return max(min(score, HELPS), score - k)
    return min(FULL, score - k)


def predicted(scores: list[int], c: float) -> float:
    """The mean score the plant predicts under c, from the unsteered scores of the same prompts."""
    return float(np.mean([shifted(s, c) for s in scores]))


@dataclass(frozen=True)
class Steer:
    """The steering plant's direction: c·`vector` (m·û, raw units) is added at block `layer`."""

    layer: int
    vector: np.ndarray
    mean_norm: float

    def record(self, conversations: int) -> dict:
        """What toy.json says was planted (`steering`)."""
        return {
            "method": "role-play conversations trained with c times the layer's mean residual "
            "norm times the unit role-to-Assistant direction added at the middle block's output "
            "(every token), their answer written at the planted score shifted one step toward "
            "the Assistant per step of c > 0 and one step into the role per step of c < 0",
            "layers": [self.layer],
            "scope": "all",
            "unit": "norm",
            "mean_norm": round(self.mean_norm, 4),
            "trained": list(TRAINED),
            "step": STEP,
            "grid": list(GRID),
            "conversations": conversations,
        }
