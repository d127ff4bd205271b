"""Movement across fake checkpoints with planted shifts; paired bootstrap intervals cover truth."""

from __future__ import annotations

import numpy as np
import pytest

from persona_dynamics.dynamics import (
    LOADING_PCS,
    LabelStats,
    Reference,
    compare,
    loading_agreement,
    movement,
    summarize,
)
from persona_dynamics.space import GroupSums, bootstrap_weights, frames, make_groups

from helpers.planted import planted


def analyse(p, labels: dict[str, np.ndarray], n_boot=0, seed=0, n_pcs=5) -> dict[str, LabelStats]:
    """Reference = the first label; every label compared with it, as analysis.py does."""
    groups = make_groups(p.roles, p.scores)
    w = bootstrap_weights(len(np.unique(p.questions)), n_boot, seed) if n_boot else None

    def label_frames(acts):
        sums = GroupSums(p.questions, len(groups.names), acts.shape[1])
        return frames(sums.add(groups.index, p.questions, acts), groups, w, n_components=n_pcs)

    ref = Reference(groups.names[:-1])
    for f in label_frames(next(iter(labels.values()))):
        ref.append(f)
    return {k: compare(k, ref, label_frames(a), groups, n_pcs) for k, a in labels.items()}


@pytest.fixture(scope="module")
def data():
    return planted()


def shifted(p, delta, direction=None):
    """Role samples moved by `delta` along `direction` (default: the planted axis)."""
    direction = p.axis if direction is None else direction
    out = p.acts.astype(np.float64).copy()
    out[p.roles != "default"] += delta * direction
    return out


def test_reference_against_itself(data):
    s = analyse(data, {"ref": data.acts})["ref"]
    assert s.summary["axis_mean"][0] == pytest.approx(0, abs=1e-9)
    assert s.summary["axis_cos"][0] == pytest.approx(1)
    for j in range(LOADING_PCS):
        assert s.summary[f"loading_corr_pc{j + 1}"][0] == pytest.approx(1)
    p = s.vectors["axis"][0]
    roles = p[:-1]
    assert s.summary["separation"][0] == pytest.approx((p[-1] - roles.mean()) / roles.std())
    np.testing.assert_allclose(s.vectors["z"][0][:-1], (roles - roles.mean()) / roles.std())
    # refit of the reference is the reference itself
    for k in ("axis", "z", "pc1", "pc2"):
        np.testing.assert_allclose(s.refit_vectors[k][0], s.vectors[k][0], atol=1e-9)


def test_planted_shift_recovered_within_2_percent(data):
    delta = 3.0
    out = analyse(data, {"a": data.acts, "b": shifted(data, delta)})
    move = movement(out["a"], out["b"])
    assert move.summary["delta_axis_mean"][0] == pytest.approx(delta, rel=0.02)
    assert move.summary["delta_axis_default"][0] == pytest.approx(0, abs=1e-9)
    np.testing.assert_allclose(move.vectors["delta_axis"][0][:-1], delta, rtol=0.02)
    assert move.summary["delta_separation"][0] < 0  # roles moved toward the Assistant
    # a shift orthogonal to the reference axis does not move projections on it
    ortho = data.dirs[2] - (data.dirs[2] @ data.axis) * data.axis
    out = analyse(data, {"a": data.acts, "c": shifted(data, delta, ortho / np.linalg.norm(ortho))})
    assert abs(movement(out["a"], out["c"]).summary["delta_axis_mean"][0]) < 0.02 * delta


def test_separation_is_scale_free(data):
    scaled = 2.5 * data.acts.astype(np.float64) + 7.0
    out = analyse(data, {"ref": data.acts, "scaled": scaled})
    a, b = out["ref"], out["scaled"]
    assert b.summary["separation"][0] == pytest.approx(a.summary["separation"][0], rel=1e-9)
    np.testing.assert_allclose(b.vectors["z"][0], a.vectors["z"][0], rtol=1e-9)
    assert b.summary["axis_cos"][0] == pytest.approx(1)
    assert b.summary["loading_corr_pc1"][0] == pytest.approx(1)
    assert b.summary["spread_pc1"][0] == pytest.approx(2.5 * a.summary["spread_pc1"][0])
    assert b.refit_summary["separation"][0] == pytest.approx(a.refit_summary["separation"][0])


def test_refit_is_sign_aligned_to_reference(data):
    rng = np.random.default_rng(0)
    rotated = data.acts @ np.linalg.qr(rng.normal(size=(48, 48)))[0]  # a different space
    out = analyse(data, {"ref": data.acts, "rot": rotated})
    r = out["rot"]
    # its own space has the same statistics as the reference (a rotation preserves them)
    ref = out["ref"].refit_summary
    for k in ("abs_cos_pc1_axis", "pc1_variance", "n_pcs_target", "separation"):
        assert r.refit_summary[k][0] == pytest.approx(ref[k][0], rel=1e-6)
    # but it is far from the reference axis, and the projections say so
    assert abs(r.summary["axis_cos"][0]) < 0.5


def test_bootstrap_frames_and_pairing(data):
    out = analyse(data, {"a": data.acts, "b": shifted(data, 1.0)}, n_boot=40, seed=5)
    a, b = out["a"], out["b"]
    assert a.summary["separation"].shape == (41,) and a.vectors["axis"].shape == (41, 49)
    # the paired bootstrap: the difference varies far less than either label's own value
    d = movement(a, b).summary["delta_axis_mean"]
    assert np.std(d[1:]) < 0.2 * np.std(b.summary["axis_default"][1:])
    point, lo, hi = summarize(d)
    assert point == pytest.approx(1.0, abs=0.01) and lo <= point + 1e-3 and 0 < hi - lo < 0.01
    again = analyse(data, {"a": data.acts, "b": shifted(data, 1.0)}, n_boot=40, seed=5)
    np.testing.assert_array_equal(again["b"].summary["separation"], b.summary["separation"])


@pytest.mark.slow
def test_bootstrap_interval_covers_planted_shift():
    """Over many planted studies, the 95% interval of a planted shift covers it about 95%."""
    from threadpoolctl import threadpool_limits  # tiny matrices: threads only add overhead

    delta, tau = 1.0, 0.6
    with threadpool_limits(1):
        point, lo, hi = np.array([_coverage_study(seed, delta, tau) for seed in range(40)]).T
    assert np.mean((lo <= delta) & (delta <= hi)) >= 0.85  # measured: 0.95
    # calibrated: the interval's width matches the spread of the estimate across studies
    assert 0.6 < np.median(hi - lo) / (2 * 1.96 * np.std(point)) < 1.6  # measured: 0.88


def _coverage_study(seed: int, delta: float, tau: float):
    """One planted study whose second label's roles move by `delta` plus per-question noise."""
    p = planted(d=16, n_roles=10, n_questions=30, stds=(5.0, 3.0), seed=seed, noise=0.5)
    rng = np.random.default_rng(1000 + seed)
    eta = rng.normal(size=(30, 16)) * tau  # per-question change, mean zero over questions
    b = shifted(p, delta) + np.where((p.roles != "default")[:, None], eta[p.questions], 0)
    out = analyse(p, {"a": p.acts, "b": b}, n_boot=200, seed=seed, n_pcs=3)
    return summarize(movement(out["a"], out["b"]).summary["delta_axis_mean"])


def test_loading_agreement_is_sign_free():
    names = ["a", "b", "c", "d"]
    la = np.array([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [5.0, 4.0]]])
    np.testing.assert_allclose(loading_agreement(names, la, names, la * [1.0, -1.0]), 1)
    np.testing.assert_allclose(loading_agreement(names, la, names[::-1], -la[:, ::-1]), 1)
    r = loading_agreement(names, la, ["a", "b", "c", "x"], la[:, [1, 0, 2, 3]])  # 3 shared
    assert r.shape == (1, 2) and r[0, 0] == pytest.approx(0.5)
