"""PersonaSpace, role vectors and group sums on planted data, against float64 and sklearn."""

from __future__ import annotations

import numpy as np
import pytest

from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.space import (
    GroupSums,
    PersonaSpace,
    bootstrap_weights,
    frames,
    interval,
    loading_correlation,
    make_groups,
    relative_position,
    statistics,
)

from helpers.planted import planted


@pytest.fixture(scope="module")
def data():
    return planted()


def fit(p, order=None, parts=1, scores=True):
    """Groups, sums (optionally permuted / split into shards) and the fitted space."""
    order = np.arange(len(p.acts)) if order is None else order
    roles, q, x = p.roles[order], p.questions[order], p.acts[order]
    groups = make_groups(roles, p.scores[order] if scores else None)
    sums = None
    for part in np.array_split(np.arange(len(x)), parts):
        s = GroupSums(p.questions, len(groups.names), x.shape[1])
        s.add(groups.index[part], q[part], x[part])
        sums = s if sums is None else sums + s
    vec, _ = sums.vectors()
    space = PersonaSpace(n_components=10).fit(vec[:-1], vec[-1], groups.fully)
    return groups, sums, space


def oracle(p):
    """Float64 reference: vectors by direct means, PCA by SVD, axis by its definition."""
    tags = np.array(
        [r if r == "default" else f"{r}@{int(s)}" for r, s in zip(p.roles, p.scores, strict=True)]
    )
    names = sorted(set(tags) - {"default"})
    x = p.acts.astype(np.float64)
    vec = np.stack([x[tags == n].mean(axis=0) for n in names])
    default = x[tags == "default"].mean(axis=0)
    mu = vec.mean(axis=0)
    _, s, vt = np.linalg.svd(vec - mu, full_matrices=False)
    axis = default - vec[[n.endswith("@3") for n in names]].mean(axis=0)
    return names, vec, default, mu, s**2 / (s**2).sum(), vt, axis


def test_groups_name_count_and_drop(data):
    g = make_groups(data.roles, data.scores, min_samples=10)
    assert g.names[:2] == ("role00@3", "role00@2") and g.names[-1] == "default"
    assert g.counts()[:2].tolist() == [105, 15] and g.counts()[-1] == 120
    assert g.fully.tolist() == [True, False] * 24 and g.scored and not g.dropped
    strict = make_groups(data.roles, data.scores, min_samples=16)
    assert strict.names == tuple(f"role{i:02d}@3" for i in range(24)) + ("default",)
    assert strict.dropped[0] == {
        "name": "role00@2",
        "role": "role00",
        "category": 2,
        "count": 15,
        "reason": "15 samples < min_samples 16",
    }
    assert len(strict.dropped) == 24


def test_groups_unscored_and_missing_scores(data):
    g = make_groups(data.roles, None)
    assert g.names[0] == "role00" and not g.scored and g.fully.all()
    assert g.counts()[0] == 120
    scores = data.scores.copy()
    scores[:7] = np.nan  # role00's first samples not judged
    g = make_groups(data.roles, scores)
    assert g.unscored_samples == 7 and g.counts()[0] == 98


@pytest.mark.parametrize(
    "change, message",
    [
        ("no_default", "no samples of the default Assistant"),
        ("no_fully", "needs them"),
        ("too_few", "no role vector has min_samples"),
        ("one_vector", "needs 2 role vectors or more"),
    ],
)
def test_groups_bad_input(data, change, message):
    roles, scores, kw = data.roles.copy(), data.scores.copy(), {}
    if change == "no_default":
        roles[roles == "default"] = "role00"
    elif change == "no_fully":
        scores[scores == 3] = 1
    elif change == "too_few":
        kw["min_samples"] = 1000
    else:
        keep = (roles == "role00") | (roles == "default")
        roles, scores, kw = roles[keep], scores[keep], {"categories": (3,)}
    with pytest.raises(PersonaDynamicsError, match=message):
        make_groups(roles, scores, **kw)


def test_vectors_match_float64_oracle_and_sklearn(data):
    from sklearn.decomposition import PCA

    names, vec, default, mu, ratio, vt, axis = oracle(data)
    groups, sums, space = fit(data)
    order = [groups.names.index(n) for n in names]
    got, _ = sums.vectors()
    np.testing.assert_allclose(got[order], vec, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got[-1], default, rtol=0, atol=1e-10)
    np.testing.assert_allclose(space.mean_, mu, atol=1e-10)
    np.testing.assert_allclose(space.explained_variance_ratio_, ratio[:10], atol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(space.components_ * vt[:10], 1)), 1, atol=1e-8)
    np.testing.assert_allclose(space.axis_, axis, atol=1e-10)
    sk = PCA(n_components=10, svd_solver="full").fit(got[:-1])
    np.testing.assert_allclose(space.explained_variance_, sk.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(space.explained_variance_ratio_, sk.explained_variance_ratio_)
    signs = np.sign(np.sum(space.components_ * sk.components_, 1))
    np.testing.assert_allclose(space.components_, sk.components_ * signs[:, None], atol=1e-8)
    np.testing.assert_allclose(space.transform(got), sk.transform(got) * signs, atol=1e-8)


def test_planted_axis_pcs_and_positions(data):
    groups, sums, space = fit(data)
    fully = [data.means[n] for n in groups.names[:-1] if n.endswith("@3")]
    truth = data.means["default"] - np.mean(fully, axis=0)
    assert space.axis_unit_ @ truth / np.linalg.norm(truth) > 0.99
    assert np.linalg.norm(space.axis_) == pytest.approx(np.linalg.norm(truth), rel=0.02)
    assert abs(space.components_[0] @ data.dirs[0]) > 0.99
    assert abs(space.components_[1] @ data.dirs[1]) > 0.99
    # the planted spectrum (from the noise-free vectors): about 0.63, 0.27; 70% needs 2 PCs
    clean = np.stack([data.means[n] for n in groups.names[:-1]])
    s = np.linalg.svd(clean - clean.mean(0), compute_uv=False) ** 2
    assert space.explained_variance_ratio_[:3] == pytest.approx(s[:3] / s.sum(), abs=0.01)
    assert space.n_target_ == 2
    assert space.cos_pc1_axis_ == pytest.approx(0.8, abs=0.02)
    # PC1 points toward the Assistant: the default projects positively on it
    assert space.default_projection_[0] > 0 and space.cos_pc1_axis_ > 0
    vec, _ = sums.vectors()
    proj = (vec[:-1] - vec[:-1].mean(0)) @ space.components_[0]
    dp = (vec[-1] - vec[:-1].mean(0)) @ space.components_[0]
    want = (dp - proj.min()) / (proj.max() - proj.min())
    assert space.default_position_[0] == pytest.approx(want)
    assert space.project_axis(vec[-1]) == pytest.approx((vec[-1] - space.mean_) @ space.axis_unit_)


def test_order_and_shard_invariance(data):
    _, base_sums, base = fit(data)
    perm = np.random.default_rng(1).permutation(len(data.acts))
    for order, parts in ((perm, 1), (None, 3), (perm, 5)):
        _, sums, space = fit(data, order=order, parts=parts)
        np.testing.assert_allclose(sums.sums, base_sums.sums, rtol=0, atol=1e-9)
        assert (sums.counts == base_sums.counts).all()
        np.testing.assert_allclose(space.components_, base.components_, atol=1e-9)
        np.testing.assert_allclose(space.axis_, base.axis_, atol=1e-9)


def test_weighted_vectors_equal_resampled_data(data):
    groups, sums, _ = fit(data)
    w = bootstrap_weights(len(sums.questions), 3, seed=7)
    vec, counts = sums.vectors(w)
    assert vec.shape == (3, len(groups.names), data.acts.shape[1])
    for b in range(3):  # oracle: literally repeat each question's samples w times
        rows = np.concatenate(
            [np.flatnonzero(data.questions == q).repeat(w[b, q]) for q in range(30)]
        )
        g = groups.index[rows]
        for j in (0, 1, len(groups.names) - 1):
            mine = rows[g == j]
            assert counts[b, j] == len(mine)
            np.testing.assert_allclose(vec[b, j], data.acts[mine].astype(float).mean(0), atol=1e-10)


def test_bootstrap_weights_seeded():
    a, b = bootstrap_weights(30, 50, seed=3), bootstrap_weights(30, 50, seed=3)
    assert (a == b).all() and (a.sum(1) == 30).all()
    assert not (a == bootstrap_weights(30, 50, seed=4)).all()


def test_frames_point_then_replicates(data):
    groups, sums, space = fit(data)
    w = bootstrap_weights(len(sums.questions), 20, seed=0)
    out = list(frames(sums, groups, w, budget=1))  # budget 1: one replicate per batch
    assert len(out) == 21
    np.testing.assert_allclose(out[0].space.axis_, space.axis_)
    cos = np.array([f.space.cos_pc1_axis_ for f in out[1:]])
    assert np.all(np.abs(cos - space.cos_pc1_axis_) < 0.05) and cos.std() > 0


def test_missing_vector_in_replicate_is_nan(data):
    roles, scores = data.roles.copy(), data.scores.copy()
    groups = make_groups(roles, scores)
    sums = GroupSums(data.questions, len(groups.names), data.acts.shape[1])
    sums.add(groups.index, data.questions, data.acts)
    w = np.ones((1, 30))
    w[0, 1::2] = 0  # only even questions: role@2 vectors (odd questions only) vanish
    w[0, 0::2] = 2
    (f,) = list(frames(sums, groups, w))[1:]
    assert np.isnan(f.vectors[1]).all() and not f.valid[1] and f.valid[0]
    assert len(f.space.projections_) == 24


def test_statistics_and_loadings(data):
    groups, sums, space = fit(data)
    stats = statistics(space)
    assert stats["n_pcs_target"] == 2 and stats["abs_cos_pc1_axis"] == abs(space.cos_pc1_axis_)
    p = stats["position_pc1"]
    assert stats["extreme_distance_pc1"] == pytest.approx(min(p, 1 - p))
    vec, _ = sums.vectors()
    load = space.loadings(vec[:-1])
    xc = vec[:-1] - space.mean_
    want = xc @ space.components_[0] / np.linalg.norm(xc, axis=1)
    np.testing.assert_allclose(load[:, 0], want)
    names = list(groups.names[:-1])
    r = loading_correlation(names, load, names[::-1], load[::-1] * 2 + 1)
    np.testing.assert_allclose(r, 1.0)
    assert np.isnan(loading_correlation(names[:2], load[:2], names[:2], load[:2])).all()


def test_relative_position_and_interval():
    roles = np.array([[0.0, 2.0], [4.0, -2.0]])
    np.testing.assert_allclose(relative_position(roles, np.array([1.0, 3.0])), [0.25, 1.25])
    lo, hi = interval(np.arange(1, 101, dtype=float))
    assert lo == pytest.approx(3.475) and hi == pytest.approx(97.525)
    lo, hi = interval(np.array([[1.0, np.nan], [3.0, np.nan]]))
    assert lo[0] == pytest.approx(1.05) and np.isnan(hi[1])


def test_fit_bad_input():
    with pytest.raises(PersonaDynamicsError, match="at least 2"):
        PersonaSpace().fit(np.ones((1, 4)), np.zeros(4), np.array([True]))
    with pytest.raises(PersonaDynamicsError, match="all equal"):
        PersonaSpace().fit(np.ones((3, 4)), np.zeros(4), np.ones(3, bool))
    with pytest.raises(PersonaDynamicsError, match="not in the question set"):
        GroupSums(np.arange(3), 2, 4).add(np.zeros(1, int), np.array([9]), np.ones((1, 4)))


def test_empty_responses_are_left_out_of_every_vector():
    from persona_dynamics.space import make_groups

    roles = np.array(["default"] * 12 + ["cat"] * 12 + ["dog"] * 12, dtype=object)
    usable = np.ones(36, bool)
    usable[[0, 13, 14]] = False  # one default and two cat samples have no response tokens
    g = make_groups(roles, None, min_samples=10, usable=usable)
    assert g.names == ("cat", "dog", "default")
    assert (g.index[[0, 13, 14]] == -1).all()
    assert np.bincount(g.index[g.index >= 0]).tolist() == [10, 12, 11]
    with pytest.raises(PersonaDynamicsError, match=r"kept \['dog'\]"):
        make_groups(roles, None, min_samples=11, usable=usable)  # cat keeps only 10 samples
