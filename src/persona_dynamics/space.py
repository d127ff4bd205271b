"""The persona space: role vectors, a PCA over them, and the Assistant Axis (pure math, no I/O).

Definitions (docs/definitions.md; the Assistant Axis paper, Lu et al.):

- A *vector* is the mean response activation of one role over the samples of one judge category:
  `pirate@3` (fully in role) and `pirate@2` (somewhat), each kept with at least `min_samples`
  samples. Without scores there is one vector per role over all its samples, named `pirate`.
  The default Assistant's vector, `default`, is the mean over all of its samples (never judged).
- The persona space is a PCA over every kept role vector (all categories), centered on their mean.
- The Assistant Axis is the default vector minus the mean of the kept axis-category (fully)
  vectors. Every PC's sign is fixed so that the default vector projects positively: PC1 points
  toward the Assistant (on later PCs, where the default sits near the middle, the sign is a
  convention only).
- Where the Assistant sits: the default's relative position on each PC within the range of the
  role vectors' projections (0 and 1 are the extreme roles).
- Role loadings: the cosine of each centered role vector with a PC; two spaces are compared by
  the correlation of their loadings over the vectors they share.

Bootstrap over questions is cheap because `GroupSums` keeps per-(question, vector) sums and
counts, filled in one pass over the samples: a replicate (questions drawn with replacement) is a
weighted sum of them, never a re-read. A vector whose resampled count is zero cannot be formed in
that replicate and is left out of it (NaN); the set of vectors is otherwise the point estimate's.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.roles import DEFAULT

UNSCORED = -1  # category of a vector built from all of a role's samples (no judge), and of default


@dataclass(frozen=True)
class Groups:
    """Which samples make each vector: kept role vectors (`role@score`), then `default` last."""

    names: tuple[str, ...]
    roles: tuple[str, ...]
    categories: np.ndarray  # (G,) judge score of each vector, UNSCORED for `default` / no judge
    index: np.ndarray  # (n_samples,) vector of each sample, -1 when the sample is not used
    fully: np.ndarray  # (G - 1,) bool: the role vectors that make the Assistant Axis
    dropped: tuple[dict, ...]  # candidate vectors below min_samples: name, role, category, count
    scored: bool  # False: one vector per role from all samples (no judge scores)
    unscored_samples: int  # role samples left out for lack of a judge score

    @property
    def n_roles(self) -> int:
        """Number of kept role vectors (default excluded)."""
        return len(self.names) - 1

    def counts(self) -> np.ndarray:
        """Samples per vector, `default` last."""
        used = self.index[self.index >= 0]
        return np.bincount(used, minlength=len(self.names))


def make_groups(
    roles: Sequence[str] | np.ndarray,
    scores: np.ndarray | None,
    categories: Sequence[int] = (3, 2),
    axis_category: int = 3,
    min_samples: int = 10,
    usable: np.ndarray | None = None,
) -> Groups:
    """Assign each sample to its role vector by judge score; drop vectors with too few samples.

    `roles` names each sample's role (`"default"` for the Assistant); `scores` is each sample's
    judge score as float, NaN where there is none, or None to use all samples of every role.
    `usable` is False for samples without activations (an empty response is stored as NaN).
    """
    roles = np.asarray(roles, dtype=object)
    usable = np.ones(len(roles), bool) if usable is None else np.asarray(usable, bool)
    named_default = roles == DEFAULT
    is_default = named_default & usable
    if not is_default.any():
        raise PersonaDynamicsError(
            "no samples of the default Assistant ('default'): the Assistant Axis needs them "
            "(generate and capture with roles.include_default = true)"
        )
    if scores is not None:
        scores = np.asarray(scores, dtype=float)
        if scores.shape != roles.shape:
            raise PersonaDynamicsError(f"{len(scores)} scores for {len(roles)} samples")
        if axis_category not in categories:
            raise PersonaDynamicsError(
                f"axis category {axis_category} is not a score category {list(categories)}"
            )
    index = np.full(len(roles), -1, dtype=np.int64)
    names, owners, cats, fully, dropped = [], [], [], [], []
    for role in sorted(set(roles[~named_default])):
        mine = (roles == role) & usable
        cands = (
            [(role, UNSCORED, mine)]
            if scores is None
            else [(f"{role}@{c}", c, mine & (scores == c)) for c in categories]
        )
        for name, cat, members in cands:
            count = int(members.sum())
            if count < min_samples:
                reason = f"{count} samples < min_samples {min_samples}"
                dropped.append(
                    {"name": name, "role": role, "category": cat, "count": count, "reason": reason}
                )
                continue
            index[members] = len(names)
            names.append(name)
            owners.append(role)
            cats.append(cat)
            fully.append(scores is None or cat == axis_category)
    if not names:
        raise PersonaDynamicsError(
            f"no role vector has min_samples {min_samples} samples: {_few(dropped)}"
        )
    if len(names) < 2:
        raise PersonaDynamicsError(f"the persona space needs 2 role vectors or more, kept {names}")
    if not any(fully):
        raise PersonaDynamicsError(
            f"no role has {min_samples} samples with score {axis_category}; the Assistant Axis "
            f"needs them: {_few(dropped)}"
        )
    index[is_default] = len(names)
    unscored = 0 if scores is None else int((~named_default & np.isnan(scores)).sum())
    return Groups(
        names=(*names, DEFAULT),
        roles=(*owners, DEFAULT),
        categories=np.array([*cats, UNSCORED]),
        index=index,
        fully=np.array(fully),
        dropped=tuple(dropped),
        scored=scores is not None,
        unscored_samples=unscored,
    )


def _few(dropped: list[dict], limit: int = 8) -> str:
    shown = ", ".join(f"{d['name']} ({d['count']})" for d in dropped[:limit])
    return shown + (f", ... ({len(dropped) - limit} more)" if len(dropped) > limit else "")


class GroupSums:
    """Per-(question, vector) activation sums and counts: the sufficient statistic of a layer.

    Filled in one streaming pass (`add` per chunk; shards merge with `+`); any weighting of the
    questions, such as a bootstrap replicate, then rebuilds every vector as a weighted sum.
    Memory: questions x vectors x hidden float64 values.
    """

    def __init__(self, questions: np.ndarray, n_groups: int, dim: int):
        self.questions = np.unique(np.asarray(questions, dtype=np.int64))
        self.sums = np.zeros((len(self.questions), n_groups, dim))
        self.counts = np.zeros((len(self.questions), n_groups), dtype=np.int64)

    def add(self, group: np.ndarray, question: np.ndarray, acts: np.ndarray) -> GroupSums:
        """Accumulate a chunk: `group` from `Groups.index` (-1 skipped), `question` ids, acts."""
        g, q, x = np.asarray(group), np.asarray(question), np.asarray(acts)
        keep = g >= 0
        if not keep.all():
            g, q, x = g[keep], q[keep], x[keep]
        pos = np.searchsorted(self.questions, q).clip(max=len(self.questions) - 1)
        if (self.questions[pos] != q).any():
            bad = sorted(set(q[self.questions[pos] != q].tolist()))[:5]
            raise PersonaDynamicsError(f"question ids {bad} are not in the question set")
        n_q, n_groups, dim = self.sums.shape
        flat = torch.from_numpy(pos * n_groups + g)
        rows = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float64)
        torch.from_numpy(self.sums).view(-1, dim).index_add_(0, flat, rows)
        self.counts += np.bincount(flat.numpy(), minlength=n_q * n_groups).reshape(n_q, n_groups)
        return self

    def __add__(self, other: GroupSums) -> GroupSums:
        """Merge the sums of two shards of the same label."""
        same = np.array_equal(self.questions, other.questions)
        if not same or self.sums.shape != other.sums.shape:
            raise PersonaDynamicsError("cannot merge sums over different questions or vectors")
        out = GroupSums(self.questions, self.sums.shape[1], self.sums.shape[2])
        out.sums = self.sums + other.sums
        out.counts = self.counts + other.counts
        return out

    def vectors(self, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean vectors and (weighted) counts under question weights: (G, d), (G,) or batched.

        `weights` is (Q,) or (B, Q) multiplicities per question; None means each question once.
        A vector with zero weighted count is NaN.
        """
        n_q, n_g, dim = self.sums.shape
        w = np.ones(n_q) if weights is None else np.asarray(weights, dtype=float)
        w2 = np.atleast_2d(w)
        total = (w2 @ self.sums.reshape(n_q, -1)).reshape(-1, n_g, dim)
        count = w2 @ self.counts
        with np.errstate(invalid="ignore", divide="ignore"):
            vec = total / count[..., None]
        vec[count == 0] = np.nan
        return (vec[0], count[0]) if w.ndim == 1 else (vec, count)


class PersonaSpace:
    """A PCA over role vectors together with the Assistant Axis; scikit-learn style.

    `fit(vectors, default, fully)` learns `mean_`, `components_` (k, d), `explained_variance_`,
    `explained_variance_ratio_`, `n_target_` (PCs needed to reach `target` of the variance),
    `axis_` (raw) and `axis_unit_`, `cos_pc1_axis_`, the fitted vectors' `projections_` (V, k),
    the default's `default_projection_` (k,) and `default_position_` (k,).
    """

    def __init__(self, n_components: int = 10, target: float = 0.70):
        self.n_components = n_components
        self.target = target

    def fit(self, vectors: np.ndarray, default: np.ndarray, fully: np.ndarray) -> PersonaSpace:
        """Fit on role vectors (V, d), the default vector (d,) and the axis mask `fully` (V,)."""
        x = np.asarray(vectors, dtype=np.float64)
        default = np.asarray(default, dtype=np.float64)
        fully = np.asarray(fully, dtype=bool)
        if x.ndim != 2 or len(x) < 2:
            raise PersonaDynamicsError(f"need at least 2 role vectors to fit, got shape {x.shape}")
        if not fully.any():
            raise PersonaDynamicsError("no fully-role-playing vector to build the Assistant Axis")
        self.mean_ = x.mean(axis=0)
        xc = x - self.mean_
        # the V x V Gram matrix's eigh, not scikit-learn's SVD: equal to 1e-14, 3-7x faster at
        # V=551, d=2048-4096 (the bootstrap fits ~200 spaces per layer); tests check it on sklearn
        eigval, eigvec = np.linalg.eigh(xc @ xc.T)
        order = np.argsort(eigval)[::-1]
        eigval = eigval[order].clip(min=0.0)
        total = float(np.einsum("ij,ij->", xc, xc))
        k = min(self.n_components, len(x) - 1, int((eigval > eigval[0] * 1e-12).sum()))
        if k == 0:
            raise PersonaDynamicsError("the role vectors are all equal: no persona space to fit")
        comps = (eigvec[:, order[:k]].T @ xc) / np.sqrt(eigval[:k])[:, None]
        sign = np.where((default - self.mean_) @ comps.T < 0, -1.0, 1.0)
        self.components_ = comps * sign[:, None]
        self.explained_variance_ = eigval[:k] / (len(x) - 1)
        self.explained_variance_ratio_ = eigval[:k] / total
        cum = np.cumsum(eigval) / total
        self.n_target_ = int(np.searchsorted(cum, self.target - 1e-12) + 1)
        self.axis_ = default - x[fully].mean(axis=0)
        norm = np.linalg.norm(self.axis_)
        if norm == 0:
            raise PersonaDynamicsError("the Assistant Axis is zero: default equals the role mean")
        self.axis_unit_ = self.axis_ / norm
        self.cos_pc1_axis_ = float(self.components_[0] @ self.axis_unit_)
        self.projections_ = self.transform(x)
        self.default_projection_ = self.transform(default[None])[0]
        self.default_position_ = relative_position(self.projections_, self.default_projection_)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Coordinates of vectors (n, d) on the components: (x - mean) . PC_j, shape (n, k)."""
        return (np.asarray(x, dtype=np.float64) - self.mean_) @ self.components_.T

    def project_axis(self, x: np.ndarray) -> np.ndarray:
        """p(v) = (v - mean) . unit axis (docs/definitions.md), in raw units; (n,) or scalar."""
        return (np.asarray(x, dtype=np.float64) - self.mean_) @ self.axis_unit_

    def loadings(self, x: np.ndarray) -> np.ndarray:
        """Cosine of each centered vector (n, d) with each component: (n, k)."""
        xc = np.asarray(x, dtype=np.float64) - self.mean_
        with np.errstate(invalid="ignore", divide="ignore"):
            return (xc @ self.components_.T) / np.linalg.norm(xc, axis=-1, keepdims=True)

    def aligned(self, ref: PersonaSpace) -> PersonaSpace:
        """A copy whose components are sign-flipped to agree with `ref`'s (for refit comparison)."""
        k = min(len(self.components_), len(ref.components_))
        sign = np.ones(len(self.components_))
        sign[:k] = np.where(np.sum(self.components_[:k] * ref.components_[:k], axis=1) < 0, -1, 1)
        out = copy.copy(self)
        out.components_ = self.components_ * sign[:, None]
        out.projections_ = self.projections_ * sign
        out.default_projection_ = self.default_projection_ * sign
        out.default_position_ = relative_position(out.projections_, out.default_projection_)
        out.cos_pc1_axis_ = float(out.components_[0] @ out.axis_unit_)
        return out


def relative_position(roles: np.ndarray, default: np.ndarray) -> np.ndarray:
    """Default's place within the range of role projections per PC: 0, 1 = the extreme roles."""
    lo, hi = np.nanmin(roles, axis=0), np.nanmax(roles, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (default - lo) / (hi - lo)


def statistics(space: PersonaSpace, top: int = 10) -> dict[str, float]:
    """The paper's per-space numbers as a flat dict (so bootstrap replicates stack by key)."""
    pos = space.default_position_
    out = {
        "n_vectors": float(len(space.projections_)),
        "pc1_variance": float(space.explained_variance_ratio_[0]),
        "cos_pc1_axis": space.cos_pc1_axis_,
        "abs_cos_pc1_axis": abs(space.cos_pc1_axis_),
        "n_pcs_target": float(space.n_target_),
        "axis_norm": float(np.linalg.norm(space.axis_)),
    }
    for j in range(top):
        p = float(pos[j]) if j < len(pos) else np.nan
        out[f"position_pc{j + 1}"] = p
        out[f"extreme_distance_pc{j + 1}"] = min(p, 1 - p)  # negative: outside the role range
    return out


def loading_correlation(
    names_a: Sequence[str], load_a: np.ndarray, names_b: Sequence[str], load_b: np.ndarray
) -> np.ndarray:
    """Pearson correlation per PC of role loadings over the vectors both spaces have: (m,).

    NaN loadings (vectors missing from a bootstrap replicate) are left out; fewer than 3 shared
    vectors gives NaN.
    """
    where_b = {n: i for i, n in enumerate(names_b)}
    shared = [(i, where_b[n]) for i, n in enumerate(names_a) if n in where_b]
    m = min(load_a.shape[1], load_b.shape[1])
    out = np.full(m, np.nan)
    if not shared:
        return out
    ia, ib = map(np.array, zip(*shared, strict=True))
    a, b = load_a[ia, :m], load_b[ib, :m]
    for j in range(m):
        ok = np.isfinite(a[:, j]) & np.isfinite(b[:, j])
        if ok.sum() >= 3:
            out[j] = np.corrcoef(a[ok, j], b[ok, j])[0, 1]
    return out


def bootstrap_weights(n_questions: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, Q) multiplicities of questions drawn with replacement, seeded."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_questions, np.full(n_questions, 1.0 / n_questions), size=n_boot)


def interval(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval over the first axis, ignoring NaN replicates."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        nan = np.full(values.shape[1:], np.nan)
        return nan, nan
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN, as intended
        lo, hi = np.nanpercentile(values, [tail, 100 - tail], axis=0)
    return lo, hi


@dataclass
class Frame:
    """One estimate of a label's space: the point estimate (weights None) or one replicate."""

    vectors: np.ndarray  # (G, d), default last; NaN rows where the vector could not be formed
    valid: np.ndarray  # (G,) bool
    space: PersonaSpace | None  # fitted on the valid role vectors; None when it cannot be


def frames(
    sums: GroupSums,
    groups: Groups,
    weights: np.ndarray | None,
    n_components: int = 10,
    target: float = 0.70,
    budget: int = 2**28,
) -> Iterator[Frame]:
    """The point estimate, then one frame per bootstrap replicate (rows of `weights`).

    Replicates are built in batches whose vectors take about `budget` bytes.
    """
    yield _frame(*sums.vectors(), groups, n_components, target)
    if weights is None or len(weights) == 0:
        return
    per = sums.sums.shape[1] * sums.sums.shape[2] * 8
    step = max(1, budget // per)
    for start in range(0, len(weights), step):
        vecs, counts = sums.vectors(weights[start : start + step])
        for v, c in zip(vecs, counts, strict=True):
            yield _frame(v, c, groups, n_components, target)


def _frame(vectors, counts, groups: Groups, n_components: int, target: float) -> Frame:
    valid = counts > 0
    roles = valid[:-1]
    space = None
    if valid[-1] and roles.sum() >= 2 and (roles & groups.fully).any():
        space = PersonaSpace(n_components, target).fit(
            vectors[:-1][roles], vectors[-1], groups.fully[roles]
        )
    return Frame(vectors=vectors, valid=valid, space=space)
