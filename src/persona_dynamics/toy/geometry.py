"""The planted persona geometry: how far each role sits from the Assistant, along one direction.

The paper finds that the dominant direction of variation among role vectors (PC1) is the
Assistant Axis, with roles ordered along it by how assistant-like they are and the Assistant at
one end. The toy plants that after SFT: at every planted layer, each role-play response's mean is
moved so that its coordinate along g (the unit direction from the fully-in-role centroid to the
default Assistant) is its role's planned offset, the roles' offsets across g are spread flatter
over their directions and scaled to a planned share, and the default Assistant is pushed further
out along g. The later stages then close a fraction of the
resulting gap (the stage plant), which is why offsets are planned against the reference stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from persona_dynamics import roles

# The demo roles by planted likeness to the Assistant, nearest first.
ORDER = [
    "tutor", "librarian", "consultant", "detective", "optimist", "robot_butler", "chef", "farmer",
    "knight", "samurai", "oracle", "cynic", "haiku_poet", "cowboy", "surfer", "wizard",
    "con_artist", "cat", "dog", "drill_sergeant", "toddler", "ghost", "vampire", "pirate",
]  # fmt: skip


# What the plant promises on the reference stage, from the paper's findings: cos(PC1, axis) at the
# lead layer and at every planted layer, the default within `end_within` of PC1's end at the lead
# layer (the paper: 0.03; the planted place, `default_position_pc1`, is met to about 0.05 on held-
# out text), inside the role range on PCs 2-10, 70% of the variance in a few PCs (paper: 4-19),
# the PC1 order by planted likeness, and the base's own cosine positive.
CLAIMS = {
    "cos_pc1_axis_lead": 0.85,
    "cos_pc1_axis_every_layer": 0.6,
    "end_within": 0.05,
    "position_pc2_10": [0.15, 0.85],
    "n_pcs_70": [3, 20],
    "spearman_pc1_likeness": 0.8,
    "base_cos_pc1_axis_above": 0.0,
}


@dataclass(frozen=True)
class Plan:
    """Where the geometry phase puts each role along g, in units of the SFT gap G.

    `push`: the default's distance from the role centroid afterwards (G = 1 before). `reach`: how
    far the nearest role gets toward the default on the reference stage, which has closed
    `f_ref` of the gap (1 = level with it). `spread`: the roles' variance across g, as a multiple
    of their variance along it.
    """

    f_ref: float
    push: float
    spread: float
    reach: float

    def likeness(self) -> dict[str, float]:
        """Planted assistant-likeness per role: 1 for the nearest, 0 for the farthest, linear."""
        return {r: 1.0 - k / (len(ORDER) - 1) for k, r in enumerate(ORDER)}

    def offset(self, role: str) -> float:
        """The role's coordinate along g relative to the centroid after the phase, in G."""
        return self.reach * (1.0 - self.f_ref) * self.push * (2.0 * self.likeness()[role] - 1.0)

    def position(self) -> float:
        """The default's planted place on PC1 within the reference stage's role range (0-1)."""
        return (1.0 + self.reach) / (2.0 * self.reach)

    def record(self, layers: list[int]) -> dict:
        """What toy.json says was planted (`geometry`)."""
        return {
            "method": "after SFT, role-play response means at each planted layer are moved along "
            "the role-to-Assistant direction to an offset by assistant-likeness, their offsets "
            "across it flattened over their directions and scaled to spread x the variance along "
            "it, and the default pushed out; the later stages then close a fraction "
            "of the gap",
            "order": ORDER,
            "likeness": {r: round(v, 4) for r, v in self.likeness().items()},
            "layers": layers,
            "push": self.push,
            "spread": self.spread,
            "reach": self.reach,
            "default_position_pc1": round(self.position(), 4),
            "claims": CLAIMS,
        }


def frame(h: np.ndarray, who: np.ndarray, full: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(centroid, g, G) of one layer's response means: the centroid of the fully-in-role role
    means, the unit direction g from it to the default Assistant's mean, and that distance G."""
    names = [r for r in ORDER if ((who == r) & full).any()]
    centroid = np.mean([h[(who == r) & full].mean(0) for r in names], axis=0)
    gap = h[who == roles.DEFAULT].mean(0) - centroid
    size = float(np.linalg.norm(gap))
    return centroid, gap / size, size


def targets(
    h: np.ndarray, who: np.ndarray, full: np.ndarray, playing: np.ndarray, plan: Plan
) -> tuple[np.ndarray, float]:
    """Target response means for one layer, and the layer's squared SFT gap (the loss scale).

    `h` (n, d): SFT response means; `who`: each response's role; `full` / `playing`: bool masks
    of fully-in-role and role-playing (scores 3 and 2) responses. Other responses keep their means.
    The roles' offsets across g are replaced by `across`: the same directions, spread flatter.
    """
    centroid, g, size = frame(h, who, full)
    names = [r for r in ORDER if ((who == r) & full).any()]
    natural = np.stack([h[(who == r) & full].mean(0) - centroid for r in names])
    natural -= np.outer(natural @ g, g)
    planned = across(natural, np.array([plan.offset(r) * size for r in names]), plan.spread)
    out = h.copy()
    for k, r in enumerate(names):
        rows = (who == r) & playing
        moved = h[rows] - natural[k] + planned[k]
        along = (moved - centroid) @ g
        out[rows] = moved + (plan.offset(r) * size - along)[:, None] * g
    default = who == roles.DEFAULT
    out[default] = h[default] + (plan.push - 1.0) * size * g
    return out, size**2


def across(natural: np.ndarray, along: np.ndarray, spread: float) -> np.ndarray:
    """The roles' planned offsets across g: their natural ones (rows) with each length capped at
    the median, the singular values square-rooted (their other differences spread over many
    directions, as the paper's 4-19 PCs for 70% say), scaled to `spread` times the variance of
    the planned offsets `along` g."""
    lengths = np.linalg.norm(natural, axis=1)
    capped = natural * np.minimum(1.0, np.median(lengths) / lengths)[:, None]
    u, s, vt = np.linalg.svd(capped, full_matrices=False)
    flat = (u * np.sqrt(s)) @ vt
    return flat * np.sqrt(spread * (along**2).sum() / (flat**2).sum())
