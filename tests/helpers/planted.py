"""Planted persona data for the analysis tests: known role structure, known axis, known noise.

Role means lie in a K-dimensional subspace with an exact, known spectrum (orthonormal directions
`dirs`, role coefficients with exactly the standard deviations `stds`); `somewhat` (score 2)
vectors are the fully (score 3) ones shrunk toward the center and pulled a little toward the
Assistant (so the axis differs from default minus the mean of all vectors). The default
Assistant sits at `center + axis_norm * axis`, with `axis` at a chosen angle to the dominant
direction. Each question adds a shared random offset; samples add noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Planted:
    acts: np.ndarray  # (n, d) float32
    roles: np.ndarray  # (n,) role name per sample
    scores: np.ndarray  # (n,) float, NaN for default samples
    questions: np.ndarray  # (n,) question id
    prompts: np.ndarray  # (n,) system prompt index
    dirs: np.ndarray  # (K, d) orthonormal role directions, dirs[0] dominant
    axis: np.ndarray  # (d,) unit planted axis = default - mean(fully) direction
    axis_norm: float
    means: dict  # vector name -> its noise-free mean (question offsets averaged in)

    def keys(self) -> list[tuple[str, int, int, int]]:
        return [
            (str(r), int(s), int(q), 0)
            for r, s, q in zip(self.roles, self.prompts, self.questions, strict=True)
        ]


def planted(
    d: int = 48,
    n_roles: int = 24,
    n_questions: int = 30,
    n_prompts: int = 4,
    stds: tuple[float, ...] = (6.0, 4.0, 2.0, 1.0),
    axis_norm: float = 8.0,
    cos_pc1_axis: float = 0.8,
    noise: float = 0.5,
    question_sd: float = 0.5,
    shrink: float = 0.6,
    pull: float = 0.25,
    seed: int = 0,
) -> Planted:
    """Synthetic activations: every role answers every (prompt, question) once, scored 3 or 2."""
    rng = np.random.default_rng(seed)
    k = len(stds)
    basis = np.linalg.qr(rng.normal(size=(d, k + 1)))[0].T  # k role dirs + 1 for the axis
    dirs, extra = basis[:k], basis[k]
    axis = cos_pc1_axis * dirs[0] + np.sqrt(1 - cos_pc1_axis**2) * extra
    # role coefficients: centered, orthogonal columns with exact (population) stds
    c = np.linalg.qr(np.column_stack([np.ones(n_roles), rng.normal(size=(n_roles, k))]))[0][:, 1:]
    coef = c * np.sqrt(n_roles) * np.array(stds)
    center = rng.normal(size=d) * 3
    offsets = coef @ dirs
    q_effect = rng.normal(size=(n_questions, d)) * question_sd
    names = [f"role{i:02d}" for i in range(n_roles)]
    lean = pull * axis_norm * axis  # somewhat vectors lean toward the Assistant
    acts, roles, scores, qs, ps = [], [], [], [], []
    # score 3 on prompts 0..n_prompts-2 plus half the questions of the last prompt, else 2
    for i, name in enumerate(names):
        for p in range(n_prompts):
            for q in range(n_questions):
                cat = 3 if (p < n_prompts - 1 or q % 2 == 0) else 2
                mean = center + offsets[i] if cat == 3 else center + shrink * offsets[i] + lean
                acts.append(mean + q_effect[q])
                roles.append(name), scores.append(cat), qs.append(q), ps.append(p)
    for p in range(n_prompts):
        for q in range(n_questions):
            acts.append(center + axis_norm * axis + q_effect[q])
            roles.append("default"), scores.append(np.nan), qs.append(q), ps.append(p)
    clean = np.array(acts)
    roles, scores = np.array(roles, dtype=object), np.array(scores, dtype=float)
    tags = np.array(
        [r if r == "default" else f"{r}@{int(c)}" for r, c in zip(roles, scores, strict=True)]
    )
    means = {t: clean[tags == t].mean(axis=0) for t in np.unique(tags)}
    acts = clean + rng.normal(size=clean.shape) * noise
    return Planted(
        acts=acts.astype(np.float32),
        roles=roles,
        scores=scores,
        questions=np.array(qs),
        prompts=np.array(ps),
        dirs=dirs,
        axis=axis,
        axis_norm=axis_norm,
        means=means,
    )
