"""analyze / compare on planted activation stores: files, numbers, invariances and bad input."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys

import h5py
import numpy as np
import pytest

from persona_dynamics.analysis import _paper_row, run_analyze, run_compare
from persona_dynamics.errors import PersonaDynamicsError
from persona_dynamics.readers import layer_sums
from persona_dynamics.space import make_groups
from persona_dynamics.store import ActivationStore, write_store

from helpers.planted import planted
from helpers.study import make_study

LAYERS = [0, 2, 3]  # of a 4-layer model: 2 is the middle one, 1 is not captured
SHIFT = {"sft": -2.0, "dpo": -1.0, "instruct": 0.0}  # role samples moved along the planted axis


@pytest.fixture(scope="module")
def data():
    return planted(d=32, n_roles=12, n_questions=20, seed=3)


def layered(p, acts):
    """(n, 3 layers, d): a shrunken copy, the planted activations, and a rotated copy."""
    rot = np.linalg.qr(np.random.default_rng(9).normal(size=(acts.shape[1],) * 2))[0]
    return np.stack([0.5 * acts, acts, acts @ rot], axis=1)


def study(tmp_path, p, judge=True, shift=SHIFT, run="t", hidden=None, **analysis):
    """Write one store per label (and judge scores) under tmp_path; return the config."""
    cfg = make_study(
        tmp_path,
        run_name=run,
        checkpoints=[{"label": k, "model": "toy"} for k in shift],
        **({"judge": {"backend": "local", "model": "toy-judge"}} if judge else {}),
        analysis={"bootstrap": 20, "n_components": 5} | analysis,
    )
    roles = p.roles != "default"
    for label, delta in shift.items():
        acts = p.acts.astype(np.float64) + np.where(roles[:, None], delta * p.axis, 0)
        if hidden:  # an isometric embedding into a wider model
            acts = acts @ np.linalg.qr(np.random.default_rng(2).normal(size=(hidden, 32)))[0].T
        attrs = {"model": "toy", "n_layers": 4, "aggregation": "mean", "complete": True}
        attrs |= {"transcripts_digest": "T", "tokens_digest": "K", "hidden_size": acts.shape[1]}
        path = tmp_path / "activations" / run / f"{label}.h5"
        write_store(path, layered(p, acts), p.keys(), LAYERS, attrs)
    if judge:
        out = tmp_path / "scores" / run
        out.mkdir(parents=True, exist_ok=True)
        for role in sorted(set(p.roles[roles])):
            rows = [
                {"system_prompt_idx": k[1], "question_idx": k[2], "rollout_idx": 0, "score": s}
                for k, s in zip(p.keys(), p.scores, strict=True)
                if k[0] == role
            ]
            text = "".join(
                json.dumps(r | {"judge": "toy", "raw": str(r["score"])}) + "\n" for r in rows
            )
            (out / f"{role}.jsonl").write_text(text)
    return cfg


def read_csv(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_analyze_space_and_summary(tmp_path, data):
    cfg = study(tmp_path, data)
    path = run_analyze(cfg)
    assert path == tmp_path / "analysis" / "t" / "space.h5"
    with h5py.File(path) as h5:
        assert h5.attrs["lead_layer"] == 2 and list(h5.attrs["layers"]) == LAYERS
        assert h5.attrs["scored"] and h5.attrs["bootstrap"] == 20
        names = list(h5["names"].asstr()[:])
        assert names[-1] == "default" and names[0] == "role00@3" and len(names) == 25
        g = h5["layer_2"]
        # role vectors are the direct means of the stored samples (float32 storage)
        tag = np.array(
            [
                r if r == "default" else f"{r}@{int(s)}"
                for r, s in zip(data.roles, data.scores, strict=True)
            ]
        )
        want = np.stack([data.acts[tag == n].astype(float).mean(0) for n in names[:-1]])
        np.testing.assert_allclose(g["vectors"][:], want, atol=1e-5)
        fully = [data.means[n] for n in names[:-1] if n.endswith("@3")]
        truth = data.means["default"] - np.mean(fully, axis=0)
        assert g["axis_unit"][:] @ truth / np.linalg.norm(truth) > 0.99
        assert abs(g["components"][0] @ data.dirs[0]) > 0.99
        assert g["boot_loadings"].shape == (20, 24, 3)
        assert g.attrs["cos_pc1_axis_lo"] <= g.attrs["cos_pc1_axis"] <= g.attrs["cos_pc1_axis_hi"]
        # the shrunken layer has the same directions, half the axis
        assert h5["layer_0"].attrs["axis_norm"] == pytest.approx(g.attrs["axis_norm"] / 2)
    summary = json.loads((path.parent / "summary.json").read_text())
    assert summary["scored"] and summary["note"] is None and summary["lead_layer"] == 2
    assert summary["vectors"]["kept"] == 24 and summary["vectors"]["default_samples"] == 80
    assert summary["vectors"]["by_category"] == {"3": 12, "2": 12}
    lead = summary["per_layer"]["2"]
    assert lead["abs_cos_pc1_axis"]["value"] == pytest.approx(0.8, abs=0.03)
    paper = {r["statistic"]: r for r in summary["paper"]}
    assert paper["PCs for 70% of variance"]["paper"].startswith("4 to 19")
    assert paper["PCs for 70% of variance"]["value"] == lead["n_pcs_target"]["value"]
    cos = [summary["per_layer"][str(x)]["cos_pc1_axis"]["value"] for x in LAYERS]
    assert paper["min over layers of cos(PC1, axis)"]["value"] == pytest.approx(min(cos))
    assert paper["cos(PC1, Assistant Axis)"]["agrees"] is True  # planted 0.8 > 0.71
    assert (
        paper["role vectors kept"]["bound"] is None and paper["role vectors kept"]["agrees"] is None
    )
    for row in paper.values():
        if row["bound"]:
            lo, hi = row["bound"]
            assert row["agrees"] == (lo <= row["value"] <= hi), row


def test_paper_rows_disagree_outside_the_bound_and_abstain_on_nan():
    assert _paper_row("cos", 2, np.array([0.5, 0.4, 0.6]), "cos_pc1_axis")["agrees"] is False
    assert _paper_row("cos", 2, np.array([0.75, 0.7, 0.8]), "cos_pc1_axis")["agrees"] is True
    assert _paper_row("cos", 2, np.array([np.nan, 0.7, 0.8]), "cos_pc1_axis")["agrees"] is None
    assert _paper_row("pc1", 2, np.array([-0.04, 0, 0]), "extreme_distance_pc1")["agrees"] is True


def test_compare_recovers_planted_stage_shifts(tmp_path, data):
    cfg = study(tmp_path, data, refit=True)
    path = run_compare(cfg)
    rows = read_csv(path)
    assert len(rows) == 2 * 3 * 3 * 25  # spaces x labels x layers x vectors
    assert {r["space"] for r in rows} == {"reference", "refit"}
    ref2 = [r for r in rows if r["space"] == "reference" and r["layer"] == "2"]
    dpo = [r for r in ref2 if r["label"] == "dpo" and r["vector"] != "default"]
    moves = np.array([float(r["delta_axis"]) for r in dpo])
    np.testing.assert_allclose(moves, 1.0, rtol=0.02)  # planted: dpo - sft = 1 along the axis
    lo, hi = (np.array([float(r[k]) for r in dpo]) for k in ("delta_axis_lo", "delta_axis_hi"))
    assert np.all(lo <= hi) and np.all(hi - lo < 0.02) and np.all(np.abs(lo - 1) < 0.02)
    assert all(r["delta_axis"] == "" for r in ref2 if r["label"] == "sft")
    labels = read_csv(path.parent / "labels.csv")
    stat = {
        (r["space"], r["label"], r["layer"], r["statistic"]): float(r["value"] or "nan")
        for r in labels
    }
    assert stat[("reference", "instruct", "2", "delta_axis_mean")] == pytest.approx(1.0, rel=0.02)
    assert stat[("reference", "instruct", "2", "axis_cos")] == pytest.approx(1.0)
    sep = [stat[("reference", k, "2", "separation")] for k in SHIFT]
    assert sep[0] > sep[1] > sep[2]  # roles approach the Assistant stage by stage
    # the halved layer: raw movement halves, the scale-free separation does not
    assert stat[("reference", "dpo", "0", "delta_axis_mean")] == pytest.approx(0.5, rel=0.02)
    assert stat[("reference", "dpo", "0", "separation")] == pytest.approx(
        stat[("reference", "dpo", "2", "separation")], rel=1e-4
    )
    assert (path.parent / "dynamics.parquet").is_file() and (
        path.parent / "labels.parquet"
    ).is_file()
    js = json.loads((path.parent / "dynamics.json").read_text())
    assert js["labels"] == list(SHIFT) and js["lead_layer"] == 2 and js["refit"]
    assert js["lead"]["dpo"]["delta_axis_mean"]["value"] == pytest.approx(1.0, rel=0.02)
    assert "refit_lead" in js


def test_analysis_without_scores_says_so(tmp_path, data):
    cfg = study(tmp_path, data, judge=False)
    run_analyze(cfg)
    summary = json.loads((tmp_path / "analysis" / "t" / "summary.json").read_text())
    assert not summary["scored"] and "no judge scores" in summary["note"]
    assert summary["vectors"]["kept"] == 12
    with h5py.File(tmp_path / "analysis" / "t" / "space.h5") as h5:
        assert list(h5["names"].asstr()[:3]) == ["role00", "role01", "role02"]
        assert "no judge scores" in h5.attrs["note"]
    run_compare(cfg)
    assert (
        "no judge scores" in json.loads((tmp_path / "analysis/t/dynamics.json").read_text())["note"]
    )


def test_dropped_vectors_and_roles_listed(tmp_path, data, caplog):
    cfg = study(tmp_path, data, min_samples=16)
    scores = tmp_path / "scores" / "t" / "role05.jsonl"
    scores.write_text(scores.read_text().replace('"score": 3.0', '"score": 1'))
    with caplog.at_level(logging.WARNING):
        run_analyze(cfg)
    assert "role05" in caplog.text and "left out" in caplog.text
    v = json.loads((tmp_path / "analysis" / "t" / "summary.json").read_text())["vectors"]
    assert v["kept"] == 11 and v["roles_left_out"] == ["role05"]
    dropped = {d["name"]: d["count"] for d in v["dropped"]}
    assert dropped["role00@2"] == 10 and dropped["role05@3"] == 0 and len(dropped) == 13


def test_store_shards_sum_to_the_whole(tmp_path, data):
    groups = make_groups(data.roles, data.scores)
    keys = data.keys()
    half = np.arange(len(keys)) % 2 == 0
    attrs = {"n_layers": 4}
    paths = {}
    for name, rows in (("all", np.ones(len(keys), bool)), ("a", half), ("b", ~half)):
        acts = layered(data, data.acts[rows])
        paths[name] = write_store(
            tmp_path / f"{name}.h5",
            acts,
            [k for k, r in zip(keys, rows, strict=True) if r],
            LAYERS,
            attrs,
        )
    where = {k: i for i, k in enumerate(keys)}
    q = np.unique(data.questions)

    def sums(name):
        with ActivationStore.open(paths[name]) as s:
            index = groups.index[[where[k] for k in s.keys()]]  # noqa: SIM118 (not a dict)
            return layer_sums(s, 2, index, len(groups.names), q)

    total, whole = sums("a") + sums("b"), sums("all")
    np.testing.assert_allclose(total.sums, whole.sums, atol=1e-9)
    assert (total.counts == whole.counts).all()


@pytest.mark.parametrize(
    "fault, message",
    [
        ("no_default", "no samples of the default Assistant"),
        ("digest", "transcripts_digest"),
        ("hidden", "hidden size 16 differs"),
        ("layer", "layer(s) [1] not captured (captured: [0, 2, 3])"),
        ("missing", "no activations for 'dpo'"),
        ("incomplete", "incomplete store"),
        ("lead", "lead_layer 3 is not an analyzed layer"),
    ],
)
def test_bad_input_is_a_clear_message(tmp_path, data, fault, message):
    cfg = study(tmp_path, data, judge=False)
    store = tmp_path / "activations" / "t" / "dpo.h5"
    overrides = {}
    if fault == "no_default":
        cfg.reference = "dpo"
        keep = data.roles != "default"
        write_store(
            store,
            layered(data, data.acts[keep]),
            [k for k, m in zip(data.keys(), keep, strict=True) if m],
            LAYERS,
            {"n_layers": 4},
        )
    elif fault == "digest":
        with h5py.File(store, "a") as h5:
            h5.attrs["transcripts_digest"] = "OTHER"
    elif fault == "hidden":
        with h5py.File(store, "a") as h5:
            acts = h5["acts"][:, :, :16]
            del h5["acts"]
            h5["acts"] = acts
    elif fault == "layer":
        overrides["layers"] = [1, 2]
    elif fault == "missing":
        store.unlink()
    elif fault == "incomplete":
        with h5py.File(store, "a") as h5:
            h5.attrs["complete"] = False
    else:
        overrides |= {"layers": [0, 2], "lead_layer": 3}
    for k, v in overrides.items():
        setattr(cfg.analysis, k, v)
    with pytest.raises(PersonaDynamicsError) as err:
        run_compare(cfg)
    assert message in str(err.value)
    if fault in ("digest", "hidden", "missing", "incomplete", "no_default"):
        assert "dpo.h5" in str(err.value)


def test_across_models_by_loadings(tmp_path, data):
    a = study(tmp_path, data, run="small")
    b = study(tmp_path, data, run="wide", hidden=48)
    with pytest.raises(PersonaDynamicsError, match="run `persona-dynamics analyze`"):
        run_compare(a, across_models=b)
    run_analyze(a), run_analyze(b)
    path = run_compare(a, across_models=b)
    assert path == tmp_path / "analysis" / "small" / "across" / "wide.json"
    rep = json.loads(path.read_text())
    assert rep["paired"] and rep["shared_vectors"] == 24 and rep["lead_layers"] == [2, 2]
    # an isometric embedding keeps every loading: correlation 1 on each PC, tight interval
    lead = [r for r in rep["loading_correlation"] if (r["layer_a"], r["layer_b"]) == (2, 2)]
    for r in lead:
        assert r["value"] == pytest.approx(1.0, abs=1e-6) and r["lo"] > 0.999
    assert rep["paper"][0]["paper"] == "> 0.92" and rep["paper"][0]["value"] == pytest.approx(1)
    side = rep["side_by_side"]["cos_pc1_axis"]
    assert side["small"]["value"] == pytest.approx(side["wide"]["value"], abs=1e-6)
    assert (path.parent / "wide.csv").is_file()


@pytest.mark.slow
def test_cli_analyze_and_compare(tmp_path, data):
    cfg = study(tmp_path, data)
    toml = tmp_path / "study.toml"
    toml.write_text(
        f'run_name = "t"\noutput_root = "{tmp_path}"\n'
        + "".join(f'[[checkpoints]]\nlabel = "{k}"\nmodel = "toy"\n' for k in SHIFT)
        + '[judge]\nbackend = "local"\nmodel = "toy-judge"\n'
    )
    assert cfg.run_name == "t"

    def cli(*args):
        cmd = [sys.executable, "-m", "persona_dynamics", *args]
        return subprocess.run(cmd, capture_output=True, text=True)

    r = cli("analyze", str(toml), "--bootstrap", "3", "--layers", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("space.h5")
    r = cli("compare", str(toml), "--bootstrap", "3", "--layers", "2", "--labels", "sft,instruct")
    assert r.returncode == 0, r.stderr
    assert {row["label"] for row in read_csv(tmp_path / "analysis/t/dynamics.csv")} == {
        "sft",
        "instruct",
    }
    r = cli("compare", str(toml), "--layers", "1")
    assert r.returncode == 2 and "not captured" in r.stderr and "Traceback" not in r.stderr
